"""Tiny models and tokenizers for tests: no hub, no downloads, milliseconds to build.

    tok = tiny_tokenizer()                       # byte-level BPE (~600 tokens), <s> prepended, pad/eos/unk
    model = tiny_model("opt")                    # also "llama", "gpt2", "roberta" (masked LM), seeded init
    model = tiny_model("llama", num_hidden_layers=3, tie_word_embeddings=False)   # config overrides
    tok = smollm2_tokenizer()                    # the real SmolLM2 tokenizer (extracted once into the cache)

Models are in eval mode, fp32, eager attention, vocabulary sized to `tiny_tokenizer()` unless overridden.
"""

from __future__ import annotations

import functools

import torch

from l2o.tasks.sources import bigbench_root, bigbench_sdist_path


def _bigbench_source():
    """Where `make data` got the BIG-bench task files on this machine, found when the test session starts (conftest
    imports this module first): the sdist (358 MB) in the real cache ($L2O_CACHE or ~/.cache/l2o) or at
    $L2O_BIGBENCH_SDIST, else the real cache's task files themselves (fetched from GitHub or a checkout: a folder
    of `<task>/task.json` is a source as a checkout is). None: no BIG-bench here. A test with its own cache
    (conftest's `isolated`) takes its task files from it instead of fetching them again (~30 s each)."""
    sdist = bigbench_sdist_path()
    if sdist.exists():
        return sdist
    return bigbench_root() if any(bigbench_root().glob("*/task.json")) else None


BIGBENCH_SOURCE = _bigbench_source()

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]

_CORPUS = [
    "The movie was great and the acting was wonderful. It was great.",
    "The film was terrible, boring and far too long. It was terrible.",
    "It was okay, neither good nor bad. The sentiment of this review is mixed, positive, negative or neutral.",
    "Does this mean that the hypothesis is true? Yes or No? Yes. No. Maybe.",
    "Suppose the premise holds. Can we infer that it follows? Yes, No, or Maybe?",
    "In the previous sentence, does the pronoun refer to the man? Yes or No?",
    "Does the word have the same meaning in these two sentences? Yes, No?",
    "I found this answer. Is that correct? Yes or No?",
    "The man broke his toe because he dropped a hammer on his foot, so he went to the doctor.",
    "Title: Paris\nContext: Paris is the capital and largest city of France.\nQuestion: What is the capital of France?"
    "\nAnswer: Paris",
    "Passage: The team kicked three field goals in the second quarter.\nQuestion: How many field goals?\nAnswer: 3",
    "What is the answer type? Description Entity Expression Human Location Number",
    "Question: Where do you keep milk?\nAnswer: in the refrigerator",
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "Once upon a time there was a little girl who lived in a small house near the forest.",
    "Statement: the player scored a goal. Is this statement plausible? True False Neither",
    "add to playlist, book restaurant, get weather, play music, search screening event, rate book",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 first second third one two three four five",
    "@highlight\n- The query mentions @placeholder and an entity such as Obama or London.",
]


@functools.lru_cache(maxsize=None)
def _tiny_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_CORPUS * 3, trainer=trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return tk.to_str()


def tiny_tokenizer(vocab_size: int = 600, add_bos: bool = True):
    """A byte-level BPE trained on a few template sentences (any text encodes; ~10 ms, cached)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer.from_str(_tiny_tokenizer_json(vocab_size))
    if not add_bos:
        tk.post_processor = None
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (49 152 tokens), from the cache; extracted from the GGUF once (~5-12 s)."""
    from transformers import AutoTokenizer

    from zoo.acquire import smollm2_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir()))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _config(arch: str, vocab_size: int, overrides: dict):
    from transformers import GPT2Config, LlamaConfig, OPTConfig, RobertaConfig

    tok = tiny_tokenizer()
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if arch == "opt":
        kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                  word_embed_proj_dim=32, max_position_embeddings=512, dropout=0.0, attention_dropout=0.0,
                  activation_dropout=0.0, layerdrop=0.0, **ids)
        cls = OPTConfig
    elif arch == "llama":
        kw = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=True, **ids)
        cls = LlamaConfig
    elif arch == "gpt2":
        kw = dict(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"])
        cls = GPT2Config
    elif arch == "roberta":
        kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=520, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, pad_token_id=ids["pad_token_id"])
        cls = RobertaConfig
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use opt, llama, gpt2 or roberta")
    kw.update(overrides)
    cfg = cls(**kw)
    try:
        cfg._attn_implementation = "eager"
    except Exception:  # noqa: BLE001 - older configs without the setter
        pass
    return cfg


def tiny_config(arch: str = "opt", **overrides):
    vocab = overrides.pop("vocab_size", len(tiny_tokenizer()))
    return _config(arch, vocab, overrides)


def tiny_model(arch: str = "opt", seed: int = 0, **overrides):
    """A tiny randomly initialised model (seeded; the global RNG is left as it was)."""
    from transformers import AutoModelForCausalLM, RobertaForMaskedLM

    cfg = tiny_config(arch, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "roberta":
            model = RobertaForMaskedLM(cfg)
        else:
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return model.eval()


def save_tiny_base(folder, arch: str = "opt") -> str:
    """A tiny model and tokenizer saved as a local base folder (what `--base <folder>` loads)."""
    from pathlib import Path

    path = Path(folder) / f"tiny-{arch}"
    tiny_model(arch).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def released_policy(path, dtype=torch.float32, names=("a.weight", "b.weight"), seed=0) -> dict:
    """Write a file the way the ZO Fine-tuner authors did: torch.save of {name: nn.Sequential(Linear(5, 64),
    Tanh(), Linear(64, 1))}; returns the modules."""
    from torch import nn

    torch.manual_seed(seed)
    nets = {n: nn.Sequential(nn.Linear(5, 64), nn.Tanh(), nn.Linear(64, 1)).to(dtype) for n in names}
    torch.save(nets, path)
    return nets


def save_tiny_smollm_base(folder) -> str:
    """A tiny random llama with the real SmolLM2 tokenizer saved as a base folder: the tasks' verbalizers are single
    tokens as on the real base, so the benchmarks' task rules and fast paths apply (seconds per run)."""
    from pathlib import Path

    tok = smollm2_tokenizer()
    path = Path(folder) / "tiny-smollm"
    tiny_model("llama", vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def same_threads_env() -> dict:
    """The environment for a subprocess whose run must be bit-equal to one made in this process: this process's
    torch thread count for OpenMP and MKL alike. A float sum over another number of threads need not be bit-equal:
    under `OMP_NUM_THREADS=1 MKL_NUM_THREADS=1` (inherited by the subprocesses, while tests/conftest.py set 2
    threads here) 12 resume tests failed. (tests/conftest.py gives 1 or 2 threads, by the cores per xdist worker.)"""
    import os

    n = str(torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def die_at_step(step: int, rank: int | None = None):
    """A Lightning callback that kills its process like `kill -9` (exit 137, no clean-up) as soon as `step`
    steps are done (with `rank`: only the process of that rank): the fault the kill-and-resume tests inject,
    kept out of production code."""
    import os

    from lightning.pytorch.callbacks import Callback

    class _DieAtStep(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == step and rank in (None, trainer.global_rank):
                os._exit(137)

    return _DieAtStep()


def run_fine_tune_killed_at(step: int, argv: list[str]) -> None:
    """`fine_tune argv` killed (`die_at_step`) as soon as `step` steps are done, after the previous step's
    checkpoint. Run it in a subprocess: `python -c "from tests.helpers import run_fine_tune_killed_at; ..."`."""
    from fine_tune.cli import build_parser, resolve_config
    from fine_tune.run import run

    run(resolve_config(build_parser().parse_args(argv)), log=lambda msg: None, callbacks=[die_at_step(step)])


def run_learnability_killed_at(step: int, argv: list[str]) -> None:
    """`python -m bench.learnability argv` whose first fine-tune run is killed (`die_at_step`) at `step`.
    Run it in a subprocess."""
    import fine_tune.run
    from bench.learnability import main

    real = fine_tune.run.run
    fine_tune.run.run = lambda cfg, log=print, callbacks=(): real(cfg, log, [*callbacks, die_at_step(step)])
    main(argv)


def run_fine_tune_interrupted_at(step: int, argv: list[str], sig: str = "SIGINT", rank: int | None = None,
                                 hook: str = "on_train_batch_end") -> None:
    """The `fine_tune` CLI on `argv`, sent a real SIGINT (as Ctrl-C does; or `sig`, e.g. a scheduler's SIGTERM) by
    itself when `step` steps are done (with `rank`, in a multi-process run: only the process of that rank), from
    the Lightning callback `hook` (e.g. "on_validation_start": as the validation after that step starts);
    exits with the CLI's exit code. Run it in a subprocess."""
    import os
    import signal
    import sys

    from lightning.pytorch.callbacks import Callback

    import fine_tune.run
    from fine_tune.cli import main

    class _CtrlC(Callback):
        pass

    def send(self, trainer, *args):
        if trainer.global_step == step and rank in (None, trainer.global_rank):
            os.kill(os.getpid(), getattr(signal, sig))

    setattr(_CtrlC, hook, send)

    real = fine_tune.run.run
    fine_tune.run.run = lambda cfg, log=print, callbacks=(): real(cfg, log, [*callbacks, _CtrlC()])
    sys.exit(main(argv))


def run_meta_train_interrupted_at(step: int, argv: list[str], during: bool | str = False,
                                  sig: str = "SIGINT", rank: int | None = None) -> None:
    """The `meta_train` CLI on `argv`, sent a real SIGINT (or `sig`, e.g. a scheduler's SIGTERM) by itself once
    `step` meta-steps are done (from the CLI's own interrupt callback, just before it checks for one), with
    `during=True` in the middle of step number `step` (after its meta-gradient, before the policy's update), or
    with `during="metaval"` in the middle of the meta-validation after `step` steps (as its first fine-tuning
    starts); with `rank` (a process of a multi-process run) only the process of that rank is sent it. Exits with
    the CLI's exit code. Run it in a subprocess."""
    import os
    import signal
    import sys

    import torch.distributed as dist

    import meta_train.cli
    from meta_train.cli import main

    def send():
        if rank in (None, dist.get_rank() if dist.is_initialized() else 0):
            os.kill(os.getpid(), getattr(signal, sig))

    if during == "metaval":
        from meta_train.module import ZOFineTunerMeta

        def short_fine_tune(self, *args, _real=ZOFineTunerMeta._short_fine_tune):
            if self.global_step == step:
                send()
            return _real(self, *args)

        ZOFineTunerMeta._short_fine_tune = short_fine_tune
        sys.exit(main(argv))

    if during:
        from meta_train.module import ZOFineTunerMeta

        estimate = None

        def setup(self, stage=None, _setup=ZOFineTunerMeta.setup):
            nonlocal estimate
            _setup(self, stage)
            estimate = self.estimator.estimate

            def interrupted(policy, streams, s):
                out = estimate(policy, streams, s)
                if s == step:
                    send()
                return out

            self.estimator.estimate = interrupted

        ZOFineTunerMeta.setup = setup
        sys.exit(main(argv))

    real = meta_train.cli.interrupt_callback

    def interrupt_callback(last):
        cb = real(last)
        check = cb.on_train_batch_end

        def on_train_batch_end(trainer, *args):
            if trainer.global_step == step:
                send()
            check(trainer, *args)

        cb.on_train_batch_end = on_train_batch_end
        return cb

    meta_train.cli.interrupt_callback = interrupt_callback
    sys.exit(main(argv))


def run_meta_train_killed_at(step: int, argv: list[str], rank: int | None = None) -> None:
    """The `meta_train` CLI on `argv`, killed (`die_at_step`: exit 137, no clean-up) as soon as `step` steps are
    done, after that step's checkpoint, before its validation; with `rank` (a process of a multi-process run)
    only the process of that rank dies, the others exit with the CLI's exit code. Run it in a subprocess."""
    import sys

    import meta_train.cli
    from meta_train.cli import main

    real = meta_train.cli.interrupt_callback
    die = die_at_step(step, rank)

    def interrupt_callback(last):
        cb = real(last)
        check = cb.on_train_batch_end

        def on_train_batch_end(trainer, *args):
            die.on_train_batch_end(trainer, *args)
            check(trainer, *args)

        cb.on_train_batch_end = on_train_batch_end
        return cb

    meta_train.cli.interrupt_callback = interrupt_callback
    sys.exit(main(argv))


def hold_run_folder(folder, writing: str | None = None):
    """Another process that claims the run folder `folder` (as a running fine_tune would) until killed; with
    `writing` (a path inside `folder`) it is half-way through `l2o.filelock.write_atomic` of that file meanwhile."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import pathlib, sys, time; from l2o.filelock import RunLock, write_atomic; "
            "RunLock(sys.argv[1]).acquire()\n"
            "def half(f):\n    f.write(b'half'); f.flush(); print('held', flush=True); time.sleep(300)\n"
            "if sys.argv[2:]:\n    p = pathlib.Path(sys.argv[1], sys.argv[2]); p.parent.mkdir(exist_ok=True); "
            "write_atomic(p, half)\n"
            "print('held', flush=True); time.sleep(300)")
    Path(folder).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), *([writing] if writing else [])],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def hold_writer_folder(parent, prefix: str):
    """Another process half-way through writing into `l2o.filelock.writer_folder(parent, prefix)` (as a download
    into the cache would be) until killed; returns it and its folder."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import pathlib, sys, time; from l2o.filelock import writer_folder\n"
            "with writer_folder(pathlib.Path(sys.argv[1]), sys.argv[2]) as d:\n"
            "    (d / 'half.bin').write_bytes(b'half'); print(d, flush=True); time.sleep(300)")
    Path(parent).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(parent), prefix], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, text=True)
    folder = Path(proc.stdout.readline().strip())
    assert (folder / "half.bin").is_file(), folder
    return proc, folder


def run_fine_tune_filling_disk_at(step: int, filler: str, argv: list[str]) -> None:
    """The `fine_tune` CLI on `argv` whose filesystem fills up once `step` steps are done (it writes `filler`
    until no space is left), so that its next checkpoint meets a full disk; exits with the CLI's exit code.
    Run it in a subprocess."""
    import os
    import sys

    from lightning.pytorch.callbacks import Callback

    import fine_tune.run
    from fine_tune.cli import main

    class _FillDisk(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == step:
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    while os.write(fd, b"\0" * 4096):
                        pass
                except OSError:  # no space left
                    pass
                finally:
                    os.close(fd)

    real = fine_tune.run.run
    fine_tune.run.run = lambda cfg, log=print, callbacks=(): real(cfg, log, [*callbacks, _FillDisk()])
    sys.exit(main(argv))


def launched_ranks(code: str, world: int = 2, timeout: float = 400) -> list[tuple[int, str, float]]:
    """`python -c code` as each process of a `world`-process run on this machine, started the way torchrun
    starts one (each gets LOCAL_RANK, 1 thread; no launcher, which would end the others when one dies), so
    that every exit code is seen: [(exit code, stderr, when it exited: time.monotonic()) of rank 0, ...].
    Rank 0 starts last, once the others wait for it at the rendezvous (Lightning's "Initializing distributed"
    line): what they did before the run's holder of --out started could not count as there before the run."""
    import os
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    errs = [tempfile.NamedTemporaryFile("w+") for _ in range(world)]  # a pipe could fill while we poll
    procs, ended, deadline = [None] * world, [None] * world, time.monotonic() + timeout

    def start(rank):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "NODE_RANK": "0", "LOCAL_RANK": str(rank)}
        procs[rank] = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=root,
                                       stdout=subprocess.DEVNULL, stderr=errs[rank], text=True)

    def waiting(rank):
        return procs[rank].poll() is not None or "Initializing distributed" in Path(errs[rank].name).read_text()

    try:
        for rank in range(1, world):
            start(rank)
        while not all(waiting(rank) for rank in range(1, world)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks 1..{world - 1} did not reach the rendezvous within {timeout} s")
            time.sleep(0.05)
        start(0)
        while None in ended:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {world} processes did not all exit within {timeout} s")
            for rank, p in enumerate(procs):
                if ended[rank] is None and p.poll() is not None:
                    ended[rank] = time.monotonic()
            time.sleep(0.05)
    finally:
        for p in procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    out = []
    for p, err, t in zip(procs, errs, ended):
        err.seek(0)
        out.append((p.returncode, err.read(), t))
        err.close()
    return out


def check_a_lost_rank(ranks: list[tuple[int, str, float]], killed: int, prog: str, step: int, out, created,
                      checkpoint: int | None, within_s: float = 10.0) -> None:
    """`launched_ranks`' result for a 2-process `prog` run into `out` whose rank `killed` died like `kill -9`
    (exit 137) after `step` steps: the survivor ended within `within_s` seconds of it (no hang in a
    collective), with exit 1 and, as its last line of stderr and with no traceback or per-rank log lines,
    the lost rank, the step, and the checkpoint (of step `checkpoint`) `--resume` continues from; with none,
    `created` (the topmost folder the run made) is gone."""
    from pathlib import Path

    (dead_rc, _, dead_at), (rc, err, at) = ranks[killed], ranks[1 - killed]
    last = Path(out) / "checkpoints" / "last.ckpt"
    then = (f"the last checkpoint {last} (step {checkpoint}) is intact: continue with --resume" if checkpoint else
            f"nothing to resume, --out {out} is as it was")
    assert dead_rc == 137
    assert rc == 1, err[-3000:]
    line = f"{prog}: error: lost the process of rank {killed} (of 2) after step {step}; {then}"
    assert err.strip().splitlines()[-1] == line, err[-3000:]
    assert "Traceback" not in err and "[rank" not in err, err[-3000:]
    assert at - dead_at < within_s, f"the survivor exited {at - dead_at:.1f} s after rank {killed} died"
    if checkpoint is None:
        assert not Path(created).exists()  # no .lock, config.yaml or tb/ left behind


def check_every_rank_stopped(ranks: list[tuple[int, str, float]], prog: str, last) -> None:
    """`launched_ranks`' result for a multi-process `prog` run that a SIGTERM stopped: every process exited 143,
    saying as its last line of stderr that it stopped and what --resume continues from (`last`), with no
    traceback and no line of Lightning's own SIGTERM handler."""
    for rc, err, _ in ranks:
        assert rc == 143, err[-3000:]
        line = f"{prog}: stopped by SIGTERM; continue with --resume (checkpoint {last})"
        assert err.strip().splitlines()[-1] == line, err[-3000:]
        assert "Traceback" not in err and "Received SIGTERM" not in err, err[-3000:]


def run_fine_tune_killing_rank(rank: int, step: int, argv: list[str]) -> None:
    """The `fine_tune` CLI on `argv` (a process of a multi-process run) whose process of rank `rank` dies
    like `kill -9` (`die_at_step`: exit 137, no clean-up) once `step` steps are done; the other processes
    exit with the CLI's exit code. Run each process in a subprocess."""
    import sys

    import fine_tune.run
    from fine_tune.cli import main

    real = fine_tune.run.run
    fine_tune.run.run = lambda cfg, log=print, callbacks=(): real(cfg, log, [*callbacks, die_at_step(step, rank)])
    sys.exit(main(argv))
