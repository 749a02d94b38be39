"""A small byte-level BPE fitted to the task's own text, with Qwen's special tokens and chat template.

A tiny model with Qwen's 151,936-entry vocabulary spends almost all its time in the output
layer; fitted to the prompts and answers of the task, a few thousand tokens cover the same
text (byte-level: any string still encodes, nothing is unknown) and training and generation
get 10-40x faster, which is what makes learning on a CPU possible. Test- and experiment-side
only: the package and the recipes always use the model's own tokenizer.

The special tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ``<think>``, ...) and
the ChatML template are Qwen's, so verl's datasets, the chat template and the end-of-turn rules
behave as with the real tokenizer; only the ids differ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from verl_confprofile.offline_tokenizer import QWEN25_CHAT_TEMPLATE, QWEN_ADDED_TOKENS


def fit_task_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 2048) -> str:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts`` and save a transformers tokenizer.

    Returns ``out_dir``, loadable with ``AutoTokenizer.from_pretrained`` and ``verl.utils.hf_tokenizer``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [token for token, _ in QWEN_ADDED_TOKENS]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t, special in QWEN_ADDED_TOKENS if special and t not in ("<|endoftext|>", "<|im_end|>")],
        chat_template=QWEN25_CHAT_TEMPLATE,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return str(out)


def task_texts(records: Iterable[dict], taxonomy, answers: Iterable[str]) -> Iterable[str]:
    """The text a model of the task reads and writes: every record's chat prompt, then ``answers``."""
    from verl_confprofile.data_prep.prompt import messages

    for record in records:
        for message in messages(record, taxonomy):
            yield message["content"]
    yield from answers
