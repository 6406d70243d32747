import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tok():
    from posttrain.models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def llama():
    from posttrain.models import tiny_model

    return tiny_model("llama")
