"""Shared helpers of the model-level tests (test_cli, test_pipeline): a byte-level tokenizer built
in memory and a fixture that runs a module's tests with one vptq and one torch thread. Import it
only after ``pytest.importorskip`` of torch/transformers/tokenizers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import tokenizers
import torch
import transformers

import vptq


def byte_tokenizer() -> Any:
    """A 256-token byte-level BPE tokenizer without merges (no files, no network)."""
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=alphabet[2])


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One vptq and one torch thread for the module's tests (small models: threads only add noise)."""
    n, n_torch = vptq.get_num_threads(), torch.get_num_threads()
    vptq.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    vptq.set_num_threads(n)
    torch.set_num_threads(n_torch)
