"""The model card's code runs as written where hf_multitask is not installed (issue 52): in a
notebook, a question "Do you wish to run the custom code? [y/N]" is an input box that waits."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch
from conftest import WITHOUT_PACKAGE, tiny_encoder_config

import hf_multitask as hm

SENTI = hm.TaskSpec("senti", "classification", num_labels=2, text_columns=("text",))
PARA = hm.TaskSpec("para", "classification", num_labels=2, text_columns=("a", "b"))
QUESTION = "Do you wish to run the custom code"
WRONG_TYPE = "You are using a model of type"


def test_the_cards_code_without_the_package_runs_as_written(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = hm.MultitaskModel(hm.MultitaskConfig(encoder_config=tiny_encoder_config("bert"), tasks=[SENTI, PARA]))
    folder = tmp_path / "repo"
    hm.hub.save_for_hub(model, tokenizer, folder, repo_id=str(folder))
    card = (folder / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    standalone = [b for b in blocks if "import hf_multitask" not in b]
    assert len(standalone) == 2, "the pipeline block and the loading block say they run without the package"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    for code in standalone:
        script = WITHOUT_PACKAGE + code + "\nassert 'hf_multitask' not in sys.modules\nprint('CARD-OK')\n"
        # no standard input: a question waits for an answer nobody gives (and the load goes wrong)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                              stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
        said = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "CARD-OK" in proc.stdout, said[-3000:]
        assert QUESTION not in said and WRONG_TYPE not in said, said[-3000:]
