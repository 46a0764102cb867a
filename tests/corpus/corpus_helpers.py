"""Shared helpers for the corpus tests: a tiny byte-level BPE tokenizer trained on the fly (no
download) and a variant that records what it encodes."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "机器学习是人工智能的一个分支。",
    "El agua de la Tierra está en movimiento constante.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and symbols + - * / = ( ) [ ] { }",
] * 4


def _train_bpe(vocab_size: int) -> Tokenizer:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(TRAIN_TEXT, trainer=trainer)
    # Like Llama / Gemma: the tokenizer's default adds one BOS in front.
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return tk


def make_tokenizer(vocab_size: int = 320, name: str = "tiny-bpe", cls=PreTrainedTokenizerFast):
    tok = cls(tokenizer_object=_train_bpe(vocab_size), bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    tok.name_or_path = name
    return tok


class CountingTokenizer(PreTrainedTokenizerFast):
    """Records every batch of texts it is asked to encode."""

    calls: list

    def __call__(self, text, *args, **kwargs):
        if not hasattr(self, "calls"):
            self.calls = []
        self.calls.append(list(text) if isinstance(text, (list, tuple)) else [text])
        return super().__call__(text, *args, **kwargs)
