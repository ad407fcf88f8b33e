"""Test-wide settings: never touch the Hugging Face Hub; one torch thread per worker."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(2)

import pytest  # noqa: E402


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


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A test with its own l2o cache, no zoo registry, the Hub offline and no proxies (a module opts in with
    `pytestmark = pytest.mark.usefixtures("isolated")`)."""
    monkeypatch.setenv("L2O_CACHE", str(tmp_path / "l2o-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("L2O_ZOO_REGISTRY", raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
