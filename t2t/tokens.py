"""The reserved token ids: one contract between data, modalities, model and decoding.

Every token vocabulary (text, a molecule's letters, ...) starts with the same four ids:

    PAD = 0   padding; never predicted. Batches are right-padded with it, labels use it as
              the ignore index, CTC uses it as the blank, and decoding fills finished rows
              with it. Its embedding row is zero (TextEmbedding's padding_idx).
    EOS = 1   end of sequence; appended to targets by the trainer, stops decoding
    BOS = 2   start of sequence; never emitted. The model puts a per-problem BOS vector in its
              place (and the problem token on the inputs' BOS of a packed row)
    UNK = 3   a symbol the vocabulary cannot express

A modality's own symbols start at NUM_RESERVED (4). Shards store ids without BOS/EOS.
Import these names from here; nothing else defines them.
"""

PAD, EOS, BOS, UNK = 0, 1, 2, 3
NUM_RESERVED = 4



def content_ids(ids) -> list[int]:
    """A decoded row's ids (a list or a tensor) up to its first EOS, PAD and BOS left out:
    what a modality's `decode` turns back into a value."""
    kept = []
    for i in ids.tolist() if hasattr(ids, "tolist") else ids:
        if i == EOS:
            break
        if i not in (PAD, BOS):
            kept.append(int(i))
    return kept


__all__ = ["BOS", "EOS", "NUM_RESERVED", "PAD", "UNK", "content_ids"]
