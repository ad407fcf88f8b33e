"""Task, Rendered and TaskError: the vocabulary every other part of l2o.tasks speaks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from l2o.tasks.errors import TaskError

KINDS = ("cls", "mch", "gen")
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class Rendered:
    """One example as the model sees it.

    prompt: the text the model conditions on.
    candidates: continuations to score (cls/mch); empty for gen.
    gold: index of the correct candidate (None for gen); the one trained on.
    answers: gold strings (gen: all acceptable answers; cls/mch: [candidates[gold]]).
    also_correct: further candidate indices that count as correct at evaluation (ReCoRD: every
        entity among the gold answers, as MeZO's `correct_candidate` list); empty for most tasks.
    """

    prompt: str
    candidates: list[str] = field(default_factory=list)
    gold: int | None = None
    answers: list[str] = field(default_factory=list)
    also_correct: tuple = ()

    @property
    def correct(self) -> frozenset:
        """Every candidate index an accuracy metric accepts: gold plus also_correct."""
        return frozenset(() if self.gold is None else (self.gold,)) | frozenset(self.also_correct)

    @property
    def target(self) -> str:
        """The teacher-forced continuation: the gold candidate, or " <first answer>\\n" for gen."""
        if self.candidates:
            return self.candidates[self.gold]
        return " " + self.answers[0] + "\n"


def cls_rendered(prompt: str, candidates: list[str], gold: int) -> Rendered:
    return Rendered(prompt=prompt, candidates=list(candidates), gold=int(gold), answers=[candidates[gold]])


# A source loader returns canonical rows for a split ("train" | "validation").
Loader = Callable[[str], list[dict]]


@dataclass
class Task:
    """A named task: where its rows come from and how a row becomes a prompt with candidates.

    Canonical rows follow the Hugging Face Hub schema of the dataset where one exists (glue/sst2,
    super_glue/*, squad, drop, trec, boolq), so a local file exported from the hub works as a source.
    """

    name: str
    kind: str
    tags: frozenset
    render_fn: Callable[[dict], Rendered]
    default_loader: Loader
    hub: tuple[str, str | None, dict] | None = None  # (path, config, {our split: hub split})
    hub_convert: Callable[[dict], dict] | None = None  # hub row -> canonical row (identity if None)
    single_split: bool = False  # the default source has one pool, split deterministically
    small_num_dev: int | None = None  # dev size when the train pool is smaller than train+dev (CB/COPA: 100)
    train_objective: str | None = None  # default training loss (None: "ce" for cls/mch, "lm" for gen)
    description: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, not {self.kind!r}")
        self.tags = frozenset(self.tags)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, kind={self.kind!r}, tags={sorted(self.tags)})"

    # -------------------------------------------------------------------------------------------- rows
    def rows(self, split: str, source: str | Path | None = None) -> list[dict]:
        """Raw (canonical-schema) rows of `split`.

        source: None = the task's default source (offline package/BIG-bench data where the task has
        it, else the hub); "hub" = the Hugging Face Hub; a path = a local .jsonl/.json/.csv file (split
        deterministically 80/20 into train/validation pools) or a folder with train.* and
        validation.* (or dev.*/test.*) files, in the hub's schema.
        """
        if split not in SPLITS:
            raise TaskError(f"task {self.name!r}: split must be 'train' or 'validation', not {split!r}")
        # the default and hub sources are cached per task; local files are re-read (they may change)
        key = (split, str(source) if source is not None else None)
        cacheable = source is None or str(source) == "hub"
        if cacheable and key in self._cache:
            return self._cache[key]
        rows = self._load(split, source)
        if not rows:
            raise TaskError(f"task {self.name!r}: the {split} split is empty"
                            + (f" (source {source})" if source is not None else ""))
        if cacheable:
            self._cache[key] = rows
        return rows

    def _load(self, split: str, source) -> list[dict]:
        from l2o.tasks import sources

        if source is None:
            return self.default_loader(split)
        if str(source) == "hub":
            if self.hub is None:
                raise TaskError(f"task {self.name!r} has no Hugging Face Hub source; use its default source "
                                "or a local file")
            path, config, split_map = self.hub
            raw = sources.load_hub(self.name, path, config, split_map.get(split, split))
            conv = self.hub_convert or (lambda r: r)
            return [conv(r) for r in raw]
        p = Path(str(source)).expanduser()
        if p.is_dir():
            f = sources.find_split_file(p, split)
            if f is None:
                raise TaskError(f"task {self.name!r}: the folder {p} has no {split} file "
                                f"({'/'.join(sources.SPLIT_FILE_STEMS[split])} .jsonl/.json/.csv)")
            return self._checked(f)
        if p.is_file():
            return split_pool(self._checked(p), split, key=self.name)
        raise TaskError(f"task {self.name!r}: source {str(source)!r} is neither 'hub', a file nor a folder")

    def _checked(self, path: Path) -> list[dict]:
        """The rows of a local data file, each rendered once so that the first bad one is named by its
        line in the file (not by its place in a later sample)."""
        from l2o.tasks import sources

        located = sources.read_file_located(path, self.name)
        for where, row in located:
            self.render(row, where=f"{path} {where}")
        return [row for _, row in located]

    # ---------------------------------------------------------------------------------------- render
    def render(self, row: dict, index: int | None = None, where: str | None = None) -> Rendered:
        """Prompt + candidates for one row; malformed rows raise TaskError naming the row (``where``,
        else ``row <index>``)."""
        where = where or (f"row {index}" if index is not None else "a row")
        if not isinstance(row, dict):
            raise TaskError(f"task {self.name!r}: {where} is not an object")
        try:
            out = self.render_fn(row)
        except TaskError as exc:
            raise TaskError(f"task {self.name!r}: {where}: {exc}") from None
        except KeyError as exc:
            raise TaskError(f"task {self.name!r}: {where} lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise TaskError(f"task {self.name!r}: {where} is malformed ({type(exc).__name__}: {exc})") from None
        if self.kind == "gen":
            if not out.answers or not all(isinstance(a, str) for a in out.answers):
                raise TaskError(f"task {self.name!r}: {where} has no answer")
        else:
            if len(out.candidates) < 2 or out.gold is None or not 0 <= out.gold < len(out.candidates):
                raise TaskError(f"task {self.name!r}: {where} has no valid gold candidate")
        return out

    def render_all(self, rows: list[dict], indices=None) -> list[Rendered]:
        idx = range(len(rows)) if indices is None else indices
        return [self.render(r, i) for r, i in zip(rows, idx)]


def split_pool(rows: list[dict], split: str, key: str, valid_fraction: float = 0.2,
               group: Callable[[dict], str] | None = None) -> list[dict]:
    """Deterministically split one pool into train/validation (seeded by `key`, not by the run seed).

    With `group`, whole groups (e.g. SQuAD articles) go to one side so no context leaks across.
    """
    import zlib

    rng = np.random.RandomState(zlib.crc32(("l2o-split:" + key).encode()))
    if group is None:
        perm = rng.permutation(len(rows))
        n_valid = max(1, int(round(len(rows) * valid_fraction))) if len(rows) > 1 else 0
        chosen = perm[:n_valid] if split == "validation" else perm[n_valid:]
        return [rows[i] for i in sorted(chosen)]
    names = sorted({group(r) for r in rows})
    perm = rng.permutation(len(names))
    n_valid = max(1, int(round(len(names) * valid_fraction))) if len(names) > 1 else 0
    valid = {names[i] for i in perm[:n_valid]}
    return [r for r in rows if (group(r) in valid) == (split == "validation")]
