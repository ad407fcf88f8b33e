"""Test-wide settings: never touch the Hugging Face Hub; torch threads that do not oversubscribe the cores."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def _torch_threads() -> int:
    """Two intra-op threads, or fewer where the xdist workers would otherwise outnumber the cores (`make test`
    runs 2 workers on this 2-core box): the OpenMP threads of oversubscribed workers spin-wait on each other at
    every op, and a forward of a tiny model took 30-60x longer (180 ms against 3 ms) while another process ran.
    `make test-slow` on this box, one run each, back to back: 984 s with 1 thread per worker, 1354 s with 2
    (TORCH_TEST_THREADS=2), though its longest tests run in-process on the real SmolLM2. TORCH_TEST_THREADS
    overrides. Runs compared bit for bit share the count (tests.helpers.same_threads_env)."""
    if os.environ.get("TORCH_TEST_THREADS"):
        return int(os.environ["TORCH_TEST_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(2, cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


torch.set_num_threads(_torch_threads())

import pytest  # noqa: E402

from tests.helpers import BIGBENCH_SOURCE  # noqa: E402  (before any test changes $L2O_CACHE)


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """tiny_bases(arch) -> a saved tiny base folder ("opt", "llama", or "smollm": a tiny llama with the real
    SmolLM2 tokenizer), made once per session on first use; tests only read it."""
    from tests.helpers import save_tiny_base, save_tiny_smollm_base

    root, made = tmp_path_factory.mktemp("bases"), {}

    def get(arch: str = "opt") -> str:
        if arch not in made:
            made[arch] = save_tiny_smollm_base(root) if arch == "smollm" else save_tiny_base(root, arch)
        return made[arch]

    return get


@pytest.fixture(scope="session")
def tiny_base(tiny_bases) -> str:
    """The tiny OPT base folder (tied embeddings)."""
    return tiny_bases("opt")


@pytest.fixture(scope="session")
def tiny_llama_base(tiny_bases) -> str:
    """The tiny llama base folder (a tied embedding / lm_head)."""
    return tiny_bases("llama")


@pytest.fixture(scope="session")
def tiny_smollm_base(tiny_bases) -> str:
    return tiny_bases("smollm")


@pytest.fixture
def one_thread():
    """Tiny models on one intra-op thread: a second only adds synchronisation (and spins on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def session_bigbench_tasks(tmp_path_factory):
    """The BIG-bench task files of the session's isolated tests, one folder for all of them: the first test that
    meets a task extracts it there from the real cache's sdist (a pass over 358 MB, ~4 s) or copies it from the
    real cache's task files, the others read it."""
    return tmp_path_factory.mktemp("bigbench-tasks")


@pytest.fixture
def isolated(tmp_path, monkeypatch, session_bigbench_tasks):
    """A test with its own l2o cache (BIG-bench task files from the session's folder, taken there from the real
    cache's sdist or files, tests/helpers.py), no zoo registry, the Hub offline and no proxies (a module opts in with
    `pytestmark = pytest.mark.usefixtures("isolated")`)."""
    cache = tmp_path / "l2o-cache"
    monkeypatch.setenv("L2O_CACHE", str(cache))
    if BIGBENCH_SOURCE:  # read only; the download itself is tested in test_tasks with stand-ins for pip and GitHub
        monkeypatch.setenv("L2O_BIGBENCH_SDIST", str(BIGBENCH_SOURCE))
        (cache / "bigbench").mkdir(parents=True)
        (cache / "bigbench" / "tasks").symlink_to(session_bigbench_tasks, target_is_directory=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("L2O_ZOO_REGISTRY", raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
