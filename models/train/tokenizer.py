"""tokenizer.py: the default model's CLIP-format BPE vocabulary, made from the
grammar's words, and a Python encoder that gives the same ids as the engine's
tokenizer (engine/tokenizer.c, transformers' CLIPTokenizer).

The vocabulary is CLIP's in structure: the 256 byte symbols (GPT-2's
bytes_to_unicode order), the same 256 with "</w>", one token per merge, then
"<|startoftext|>" and "<|endoftext|>". The merges are learned by plain BPE on
the grammar's words until each word is a single token ("circle</w>"), so any
text still tokenizes (down to bytes) and every grammar word is one id.

    python3 tokenizer.py OUT_DIR     # writes vocab.json, merges.txt, tokenizer_config.json
"""
import json
import os
import re
import sys

from scenes import GRAMMAR_WORDS

BOS, EOS, EOW = "<|startoftext|>", "<|endoftext|>", "</w>"
MAX_TOKENS = 77


def bytes_to_unicode():
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


BYTE_ENCODER = bytes_to_unicode()


def word_symbols(word):
    s = [BYTE_ENCODER[b] for b in word.encode("utf-8")]
    s[-1] += EOW
    return s


def learn_merges(words):
    """Plain BPE on the word set (each word counted once): merge the most
    frequent adjacent pair (ties: first in sorted order) until every word is
    one symbol. Applying the merges by rank then reproduces these splits."""
    seqs = [word_symbols(w) for w in sorted(set(words))]
    merges = []
    while any(len(s) > 1 for s in seqs):
        counts = {}
        for s in seqs:
            for pair in zip(s, s[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        out = []
        for s in seqs:
            i, t = 0, []
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    t.append(joined)
                    i += 2
                else:
                    t.append(s[i])
                    i += 1
            out.append(t)
        seqs = out
    return merges


def build_vocab(merges):
    base = list(BYTE_ENCODER.values())
    tokens = base + [b + EOW for b in base] + [a + b for a, b in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def write(out_dir, words=GRAMMAR_WORDS):
    os.makedirs(out_dir, exist_ok=True)
    merges = learn_merges(words)
    vocab = build_vocab(merges)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "model_max_length": MAX_TOKENS,
                   "pad_token": EOS, "tokenizer_class": "CLIPTokenizer", "unk_token": EOS,
                   "do_lower_case": True}, f, indent=1)
    return vocab, merges


# CLIP's split, on lower-cased text with whitespace collapsed: letters runs,
# single digits, runs of other non-space characters.
_PATTERN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.UNICODE)


class Tokenizer:
    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.bos, self.eos = vocab[BOS], vocab[EOS]
        self.cache = {}

    @classmethod
    def load(cls, folder):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            merges = [tuple(l.split()) for l in f if l.strip() and not l.startswith("#version")]
        return cls(vocab, merges)

    def bpe(self, piece):
        if piece in self.cache:
            return self.cache[piece]
        s = [BYTE_ENCODER[b] for b in piece.encode("utf-8")]
        s[-1] += EOW
        while len(s) > 1:
            pairs = [(self.ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(s, s[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            s = s[:i] + [s[i] + s[i + 1]] + s[i + 2:]
        ids = [self.vocab[t] for t in s]
        self.cache[piece] = ids
        return ids

    def encode(self, text):
        """77 ids: <start> tokens... <end>, padded with <end> (truncated)."""
        text = " ".join(text.split()).lower()
        ids = []
        for piece in _PATTERN.findall(text):
            ids += self.bpe(piece)
        ids = [self.bos] + ids[:MAX_TOKENS - 2] + [self.eos]
        return ids + [self.eos] * (MAX_TOKENS - len(ids))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    vocab, merges = write(sys.argv[1])
    print(f"{len(vocab)} tokens, {len(merges)} merges, {len(GRAMMAR_WORDS)} grammar words")
