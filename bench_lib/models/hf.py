"""Well-known architectures built from Hugging Face `transformers` configurations with random
weights: nothing is downloaded. They need the `hf` extra (`pip install -e '.[hf]'`; `make bench
PROFILE=hf` installs it and runs them).

- `bert-base`: `BertForSequenceClassification` with BERT-base's default configuration (12
  layers, hidden 768, 110M parameters), token ids of length `SEQ_LEN`, 2 labels. Fine-tuning
  blocks: the embeddings, then the 12 encoder layers.
- `gpt2`: `GPT2LMHeadModel` with GPT-2 small's configuration (12 layers, hidden 768) but an
  untied LM head (163M parameters instead of 124M), next-token loss over `SEQ_LEN` tokens.
  Blocks: the token and position embeddings, then the 12 decoder layers. Untied, because with
  GPT-2's tied head the token embedding must stay trainable, and a trainable parameter before
  frozen blocks makes `frozen_nograd` train something else than `frozen_<n>` (no gradient
  reaches it through blocks run under no_grad; the suite's check caught exactly that).

LoRA (`lora` strategy) adapts what peft adapts in these architectures by default: BERT's
`query` and `value`, GPT-2's `c_attn`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench_lib.errors import UserError
from bench_lib.models.base import ModelInstance, ModelSpec

SEQ_LEN = 128


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(
            "the Hugging Face models need the hf extra: pip install -e '.[hf]' "
            "(make bench PROFILE=hf installs it)"
        ) from None
    return transformers


def _classification_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output.logits, target)


def _lm_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output.logits.flatten(0, 1), target.flatten())


def bert_base(batch_size: int) -> ModelInstance:
    tf = transformers_module()
    config = tf.BertConfig(num_labels=2)
    model = tf.BertForSequenceClassification(config)
    ids = torch.randint(0, config.vocab_size, (batch_size, SEQ_LEN))
    return ModelInstance(
        model,
        (ids,),
        blocks=[model.bert.embeddings, *model.bert.encoder.layer],
        loss=_classification_loss,
        target=torch.randint(0, config.num_labels, (batch_size,)),
        lora_targets=("query", "value"),  # peft's default for BERT: the attention projections
    )


def gpt2_small(batch_size: int) -> ModelInstance:
    tf = transformers_module()
    config = tf.GPT2Config(tie_word_embeddings=False)
    model = tf.GPT2LMHeadModel(config)
    ids = torch.randint(0, config.vocab_size, (batch_size, SEQ_LEN + 1))
    return ModelInstance(
        model,
        (ids[:, :-1],),
        blocks=[model.transformer.wte, model.transformer.wpe, *model.transformer.h],
        loss=_lm_loss,
        target=ids[:, 1:].contiguous(),
        lora_targets=("c_attn",),  # peft's default for GPT-2: the fused q, k, v projection
    )


SPECS = (
    ModelSpec(
        name="bert-base",
        factory=bert_base,
        description=f"BERT-base sequence classifier (HF config, random weights), {SEQ_LEN} tokens",
    ),
    ModelSpec(
        name="gpt2",
        factory=gpt2_small,
        description=f"GPT-2 small LM, untied head (HF config, random weights), {SEQ_LEN} tokens",
    ),
)
