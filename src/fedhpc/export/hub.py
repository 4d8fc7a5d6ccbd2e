"""`--push-to-hub`: the finished export uploaded to a Hugging Face Hub model repository.

Through `huggingface_hub`'s `HfApi` (create the repository if it does not
exist, then one commit holding every file), imported only when asked for. The
token is huggingface_hub's own: ``HF_TOKEN`` or the one `hf auth login` stored.
A failed push leaves the export on disk, complete, to push again.
"""

from __future__ import annotations

from pathlib import Path

from fedhpc.errors import TransferError


def push_to_hub(folder: Path, repo_id: str, commit_message: str, private: bool = False) -> str:
    """Upload `folder` to the model repository `repo_id`; return the commit's URL."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
    except ModuleNotFoundError as e:  # a transformers dependency, so only a broken environment lacks it
        raise TransferError(f"--push-to-hub needs huggingface_hub ({e}); pip install huggingface_hub") from e
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message)
    except LocalTokenNotFoundError as e:
        raise TransferError(f"cannot push to {repo_id}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); "
                            f"the export in {folder} is complete") from e
    except (HfHubHTTPError, OSError) as e:
        raise TransferError(f"pushing {folder} to {repo_id} failed: {e}; the export there is complete, push it "
                            "again with `hf upload`") from e
    return str(commit.commit_url)
