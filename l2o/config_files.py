"""Reading the YAML files a user gives or a run saved: a `--config`, a run's saved config.yaml, a
bench.reproduce table. The one reader for both apps and the bench suites, so each says a bad file the same way:
one sentence naming the file and what is wrong with it (`ConfigError`), never a parser's traceback.
"""

from __future__ import annotations

from l2o.errors import ConfigError


def read_yaml_mapping(path, what: str = "config file", fix: str = "") -> dict:
    """The mapping the YAML file `path` holds ({} for an empty file). ConfigError, naming `what` and the file, when
    it cannot be read, is not UTF-8 text (a checkpoint given by mistake), is not YAML, or holds no mapping; `fix`,
    if given, ends that sentence with what to do."""
    try:
        return _read(path, what)
    except ConfigError as err:
        raise ConfigError(f"{err}; {fix}" if fix else str(err)) from None


def _read(path, what: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a YAML text file (it is not UTF-8)") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        why = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what} {path} is not valid YAML{at}: {why}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of option: value")
    return data


def read_saved_run(path) -> dict:
    """A run's saved config.yaml, which `--resume` (fine_tune's and meta_train's) compares with the new options. A
    missing one is refused too: a run saves it before its first step, so a checkpoint without it means it was
    removed, and a resume used to go on without comparing anything."""
    return read_yaml_mapping(path, "the run's saved configuration", fix="--resume cannot check its options without "
                             "it; restore it, or start the run again in another --out")


def save_run(path, text: str) -> None:
    """Write a run's config.yaml (`text`) atomically: a kill mid-write on a resume left a truncated file, which the
    next --resume refused as damaged; and another process of the run may be reading it meanwhile."""
    from l2o.filelock import write_bytes_atomic

    write_bytes_atomic(path, text.encode("utf-8"))
