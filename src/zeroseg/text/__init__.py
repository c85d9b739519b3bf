"""Class-name embeddings for zero-shot segmentation.

``get_encoder(spec).embed(class_names)`` returns a ``(C, D)`` float32 tensor with L2-normalised rows.
Specs: ``glove-6b-50d`` (offline default), ``minilm``, ``word2vec:<path>``, ``glove:<path>``,
``fasttext:<path>``, ``sentence-transformers:<dir>``, ``clip:<model>:<checkpoint>``,
``random:<dim>[:<seed>]``.
Synonyms are written ``"tvmonitor|television|monitor"``; words may be separated by spaces, ``-`` or ``_``.

Heavy dependencies (gensim, sentence-transformers, open_clip) are imported only when an encoder needs them.
"""

from zeroseg.text.encoders import (
    DEFAULT_ENCODER,
    SYNONYM_SEPARATOR,
    RandomEncoder,
    TextEncoder,
    cosine_similarity_matrix,
    format_similarity,
    get_encoder,
    list_encoders,
    parse_class_names,
    random_encoder,
    split_synonyms,
    split_words,
)

__all__ = [
    "DEFAULT_ENCODER",
    "SYNONYM_SEPARATOR",
    "RandomEncoder",
    "TextEncoder",
    "cosine_similarity_matrix",
    "format_similarity",
    "get_encoder",
    "list_encoders",
    "parse_class_names",
    "random_encoder",
    "split_synonyms",
    "split_words",
]
