"""The only module that talks to the Hugging Face Hub (``huggingface_hub`` imported lazily).

Downloads always pin a 40-hex commit revision; ``HF_HUB_OFFLINE=1`` means "use the local
Hugging Face cache only, never the network"; pushes record the commit the Hub returns.
"""

from __future__ import annotations

from l2o.cache import hub_offline

from .errors import ZooError
from .ids import is_commit
from .transfer import TransferError


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def _hf_api():
    """A ``huggingface_hub.HfApi`` (a seam the tests replace)."""
    from huggingface_hub import HfApi

    return HfApi()


def hub_fetch(repo_id: str, revision: str, filename: str) -> str:
    """Local path of ``filename`` at ``repo_id@revision`` (via the Hugging Face cache)."""
    if not is_commit(revision):
        raise TransferError(f"Hub source {repo_id} does not pin a commit revision")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise TransferError("Hub skipped (huggingface_hub is not installed)") from None
    offline = hub_offline()
    try:
        return hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline)
    except Exception as err:  # noqa: BLE001 - every failure becomes one clause for the user
        if offline:
            raise TransferError(
                f"Hub skipped (HF_HUB_OFFLINE=1 and {repo_id}@{revision[:8]} is not in the Hugging Face cache)"
            ) from None
        raise TransferError(f"Hub repo {repo_id}@{revision[:8]} is unreachable ({_first_line(err)})") from None


def push_folder(repo_id: str, folder: str, commit_message: str) -> str:
    """Upload ``folder`` to the model repo ``repo_id``; return the new commit's 40-hex oid."""
    if hub_offline():
        raise ZooError(f"cannot push to the Hugging Face Hub repo {repo_id} because HF_HUB_OFFLINE=1")
    try:
        api = _hf_api()
        api.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=commit_message)
    except ImportError:
        raise ZooError("cannot push to the Hugging Face Hub because huggingface_hub is not installed") from None
    except Exception as err:  # noqa: BLE001
        raise ZooError(f"pushing to the Hugging Face Hub repo {repo_id} failed ({_first_line(err)})") from None
    oid = getattr(info, "oid", None)
    if not is_commit(oid):
        raise ZooError(f"the Hugging Face Hub did not return a commit id for {repo_id} (got {oid!r})")
    return oid
