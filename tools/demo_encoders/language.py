"""A byte-level BPE tokenizer trained with `tokenizers`, and a tiny GPT-2 pre-trained as a
language model on the world's captions (the stand-in for GPT-2's web pre-training)."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

PAD, EOS = "<pad>", "<|endoftext|>"


def train_tokenizer(captions: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE like GPT-2's. The post-processor appends EOS, which CLIP's text tower pools
    on; GPT-2 code tokenizes with ``add_special_tokens=False`` and appends EOS itself."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(captions, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD)


def train_gpt2(tokenizer: PreTrainedTokenizerFast, captions: list[str], epochs: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=128, n_layer=2, n_head=4,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    eos = tokenizer.eos_token_id
    rng = random.Random(seed)
    for epoch in range(epochs):
        order = rng.sample(captions, len(captions))
        for start in range(0, len(order), 64):
            ids = [[eos] + tokenizer(c, add_special_tokens=False).input_ids + [eos] for c in order[start:start + 64]]
            length = max(map(len, ids))
            batch = torch.full((len(ids), length), tokenizer.pad_token_id)
            labels = torch.full((len(ids), length), -100)
            for i, row in enumerate(ids):
                batch[i, :len(row)] = torch.tensor(row)
                labels[i, :len(row)] = torch.tensor(row)
            loss = model(input_ids=batch, attention_mask=(labels != -100).long(), labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        log.info("gpt2 epoch %d: loss %.3f", epoch, loss.item())
    return model.eval()


def save_language(tokenizer: PreTrainedTokenizerFast, model: GPT2LMHeadModel, tokenizer_dir: Path, gpt2_dir: Path) -> None:
    tokenizer.save_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(gpt2_dir)  # a GPT-2 folder carries its tokenizer, like the hub's "gpt2"
    model.save_pretrained(gpt2_dir)
