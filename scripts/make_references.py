#!/usr/bin/env python3
"""Writes the small random-weight checkpoints and the transformers references that pinmoe's tests use.

Runs where torch, transformers (5.17) and tokenizers (0.23) are installed (the lent GPU machine), on the
CPU in fp32 so that the numbers are deterministic:

    python3 scripts/make_references.py --tokenizer-dir DIR_WITH_QWEN3_TOKENIZER --out OUTDIR

It writes, under OUTDIR:
  qwen3moe-f32/     hub-style config.json (num_experts, top-level rope_theta), 3 safetensors shards + index,
                    per-expert tensor names, fp32, untied lm_head, norm_topk_prob=true
  qwen3moe-bf16/    config.json as transformers 5 writes it (rope_parameters), a single bf16
                    model.safetensors, tied embeddings, norm_topk_prob=false, one dense (mlp_only) layer
  each with reference.json: per prompt, the prompt ids, 32 greedy ids and, per generated position, the
  top-5 (id, logit) of the fp32 forward pass (prefill, then one token at a time with the KV cache)
  tokenizer_corpus.json: text -> ids (tokenizers) and ids -> text, for the corpus below
  qwen3next-f32/    hub-style Qwen3-Next config (full_attention_interval, top-level partial_rotary_factor),
                    3 shards, fp32, a few mtp.* tensors; reference.json also holds per-layer hidden states
  qwen3next-bf16/   the transformers 5 config (layer_types, rope_parameters), one bf16 file
  */reference_bf16_cuda.json (for the bf16 checkpoints, where a GPU is present): the same prompts through
                    transformers in bf16 on the GPU, for the GPU path's bf16 checks
  chat_templates.json: conversations rendered by apply_chat_template, with their ids

Weights are drawn from a seeded generator and scaled so that the top logits stand well apart (the script
prints the smallest top-1/top-2 margin it saw; a margin far above 1e-4 makes greedy ids a fair test).
"""

import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file

NEW_TOKENS = 32
TOP_K = 5


def qwen3moe_tensors(cfg, gen, dtype):
    """Hub-style tensor names and shapes for Qwen3MoeForCausalLM, random values."""
    h = cfg["hidden_size"]
    hd = cfg["head_dim"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    n_exp = cfg["num_experts"]
    inter = cfg["moe_intermediate_size"]
    dense_inter = cfg["intermediate_size"]
    vocab = cfg["vocab_size"]
    # With tied embeddings a weak residual stream makes every token predict itself; a gain on the
    # layers' output projections keeps the tied model's greedy continuations varied.
    gain = 1.0 if not cfg["tie_word_embeddings"] else 6.0

    def rnd(*shape, std):
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    def norm_w(n):
        return (1.0 + 0.2 * torch.randn(n, generator=gen)).to(dtype)

    t = {}
    t["model.embed_tokens.weight"] = rnd(vocab, h, std=1.0)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm_w(h)
        t[p + "post_attention_layernorm.weight"] = norm_w(h)
        t[p + "self_attn.q_proj.weight"] = rnd(nh * hd, h, std=1.0 / math.sqrt(h))
        t[p + "self_attn.k_proj.weight"] = rnd(nkv * hd, h, std=1.0 / math.sqrt(h))
        t[p + "self_attn.v_proj.weight"] = rnd(nkv * hd, h, std=1.0 / math.sqrt(h))
        t[p + "self_attn.o_proj.weight"] = rnd(h, nh * hd, std=gain / math.sqrt(nh * hd))
        t[p + "self_attn.q_norm.weight"] = norm_w(hd)
        t[p + "self_attn.k_norm.weight"] = norm_w(hd)
        if i in cfg.get("mlp_only_layers", []):
            t[p + "mlp.gate_proj.weight"] = rnd(dense_inter, h, std=1.0 / math.sqrt(h))
            t[p + "mlp.up_proj.weight"] = rnd(dense_inter, h, std=1.0 / math.sqrt(h))
            t[p + "mlp.down_proj.weight"] = rnd(h, dense_inter, std=gain / math.sqrt(dense_inter))
        else:
            t[p + "mlp.gate.weight"] = rnd(n_exp, h, std=2.0 / math.sqrt(h))
            for e in range(n_exp):
                q = p + f"mlp.experts.{e}."
                t[q + "gate_proj.weight"] = rnd(inter, h, std=1.0 / math.sqrt(h))
                t[q + "up_proj.weight"] = rnd(inter, h, std=1.0 / math.sqrt(h))
                t[q + "down_proj.weight"] = rnd(h, inter, std=gain / math.sqrt(inter))
    t["model.norm.weight"] = norm_w(h)
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = rnd(vocab, h, std=6.0 / math.sqrt(h))
    return t


def save_sharded(tensors, out_dir, n_shards):
    names = list(tensors.keys())
    if n_shards == 1:
        save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        return
    per = math.ceil(len(names) / n_shards)
    weight_map = {}
    total = 0
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[s * per:(s + 1) * per]}
        save_file(part, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for n, v in part.items():
            weight_map[n] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


@torch.no_grad()
def greedy_reference(model, prompt_ids, device="cpu"):
    """Prefill, then decode one token at a time with the KV cache; top-5 logits at every step."""
    ids = torch.tensor([prompt_ids], device=device)
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    logits = out.logits[0, -1].float()
    generated, tops, min_margin = [], [], float("inf")
    for step in range(NEW_TOKENS):
        vals, idx = torch.topk(logits, TOP_K)
        tops.append([{"id": int(i), "logit": float(v)} for v, i in zip(vals, idx)])
        min_margin = min(min_margin, float(vals[0] - vals[1]))
        nxt = int(idx[0])
        generated.append(nxt)
        if step + 1 == NEW_TOKENS:
            break
        out = model(input_ids=torch.tensor([[nxt]], device=device), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
    return generated, tops, min_margin


def write_reference(model, name, out_dir, prompts, extra=None):
    """reference.json: for each prompt, its ids, the greedy continuation and the top-5 logits per step."""
    refs = []
    for p in prompts:
        g, tops, margin = greedy_reference(model, p)
        print(f"{name}: prompt {len(p)} tokens -> {g[:8]}... min top1-top2 margin {margin:.4f}")
        refs.append({"prompt_ids": p, "greedy_ids": g, "top_logits": tops, "min_margin": margin})
    doc = {"model": name, "transformers_version": __import__("transformers").__version__,
           "torch_version": torch.__version__, "compute": "fp32 cpu", "new_tokens": NEW_TOKENS, "cases": refs}
    doc.update(extra or {})
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(doc, f)


def write_configs(out_dir, cfg_kwargs, dtype, hub_style, architecture, model_type, transformers_version,
                  to_config, generation):
    """config.json and generation_config.json. hub_style: config.json written as the hub's checkpoints
    have it (the legacy flat keys, `torch_dtype`, the transformers release that first had the model);
    else by this transformers' own save_pretrained from to_config(a copy of cfg_kwargs)."""
    dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    if hub_style:
        cfg = dict(cfg_kwargs)
        cfg.update({"architectures": [architecture], "model_type": model_type,
                    "torch_dtype": dtype_name, "hidden_act": "silu", "attention_bias": False,
                    "attention_dropout": 0.0, "use_cache": True, "output_router_logits": False,
                    "router_aux_loss_coef": 0.001, "initializer_range": 0.02,
                    "transformers_version": transformers_version})
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    else:
        conf = to_config(dict(cfg_kwargs))
        conf.architectures = [architecture]
        conf.dtype = dtype_name
        conf.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)


def make_qwen3moe(out_root, name, cfg_kwargs, dtype, n_shards, hub_style, seed):
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = qwen3moe_tensors(cfg_kwargs, gen, dtype)
    save_sharded(tensors, out_dir, n_shards)

    def to_config(kw):
        theta = kw.pop("rope_theta")
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        try:
            return Qwen3MoeConfig(**kw)
        except TypeError:  # an older transformers without rope_parameters
            kw.pop("rope_parameters")
            return Qwen3MoeConfig(rope_theta=theta, **kw)

    write_configs(out_dir, cfg_kwargs, dtype, hub_style, "Qwen3MoeForCausalLM", "qwen3_moe", "4.51.0", to_config,
                  {"bos_token_id": cfg_kwargs["bos_token_id"], "eos_token_id": cfg_kwargs["eos_token_id"],
                   "do_sample": False})

    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    model.eval()
    # Every tensor we wrote must have reached the model unchanged (widened to fp32).
    sd = model.state_dict()
    print(name, "loaded; state dict has", len(sd), "entries")

    vocab = cfg_kwargs["vocab_size"]
    pgen = torch.Generator().manual_seed(seed + 1)
    prompts = [
        [17],
        torch.randint(0, vocab, (7,), generator=pgen).tolist(),
        torch.randint(0, vocab, (33,), generator=pgen).tolist(),
        torch.randint(0, vocab, (420,), generator=pgen).tolist(),
    ]
    write_reference(model, name, out_dir, prompts)


def qwen3next_tensors(cfg, gen, dtype):
    """Hub-style tensor names and shapes for Qwen3NextForCausalLM (plus a few mtp.* tensors)."""
    h = cfg["hidden_size"]
    hd = cfg["head_dim"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    key_dim, value_dim = nk * dk, nv * dv
    conv_dim = 2 * key_dim + value_dim
    n_exp, inter, shared = cfg["num_experts"], cfg["moe_intermediate_size"], cfg["shared_expert_intermediate_size"]
    vocab = cfg["vocab_size"]

    def rnd(*shape, std, mean=0.0):
        return (mean + torch.randn(*shape, generator=gen) * std).to(dtype)

    t = {"model.embed_tokens.weight": rnd(vocab, h, std=1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = rnd(h, std=0.2)  # zero-centred: applied as 1 + w
        t[p + "post_attention_layernorm.weight"] = rnd(h, std=0.2)
        if (i + 1) % cfg["full_attention_interval"] == 0:
            t[p + "self_attn.q_proj.weight"] = rnd(2 * nh * hd, h, std=1.0 / math.sqrt(h))
            t[p + "self_attn.k_proj.weight"] = rnd(nkv * hd, h, std=1.0 / math.sqrt(h))
            t[p + "self_attn.v_proj.weight"] = rnd(nkv * hd, h, std=1.0 / math.sqrt(h))
            t[p + "self_attn.o_proj.weight"] = rnd(h, nh * hd, std=1.0 / math.sqrt(nh * hd))
            t[p + "self_attn.q_norm.weight"] = rnd(hd, std=0.2)
            t[p + "self_attn.k_norm.weight"] = rnd(hd, std=0.2)
        else:
            q = p + "linear_attn."
            t[q + "in_proj_qkvz.weight"] = rnd(2 * key_dim + 2 * value_dim, h, std=1.0 / math.sqrt(h))
            t[q + "in_proj_ba.weight"] = rnd(2 * nv, h, std=1.0 / math.sqrt(h))
            t[q + "conv1d.weight"] = rnd(conv_dim, 1, cfg["linear_conv_kernel_dim"], std=0.5)
            t[q + "dt_bias"] = rnd(nv, std=0.5)
            # Decays from fast to slow, so that the state carries information over many tokens.
            t[q + "A_log"] = torch.log(torch.rand(nv, generator=gen) * 1.5 + 0.02).to(dtype)
            t[q + "norm.weight"] = rnd(dv, std=0.2, mean=1.0)  # gated norm: weight as is
            t[q + "out_proj.weight"] = rnd(h, value_dim, std=1.0 / math.sqrt(value_dim))
        t[p + "mlp.gate.weight"] = rnd(n_exp, h, std=2.0 / math.sqrt(h))
        for e in range(n_exp):
            q = p + f"mlp.experts.{e}."
            t[q + "gate_proj.weight"] = rnd(inter, h, std=1.0 / math.sqrt(h))
            t[q + "up_proj.weight"] = rnd(inter, h, std=1.0 / math.sqrt(h))
            t[q + "down_proj.weight"] = rnd(h, inter, std=1.0 / math.sqrt(inter))
        t[p + "mlp.shared_expert.gate_proj.weight"] = rnd(shared, h, std=1.0 / math.sqrt(h))
        t[p + "mlp.shared_expert.up_proj.weight"] = rnd(shared, h, std=1.0 / math.sqrt(h))
        t[p + "mlp.shared_expert.down_proj.weight"] = rnd(h, shared, std=1.0 / math.sqrt(shared))
        t[p + "mlp.shared_expert_gate.weight"] = rnd(1, h, std=1.0 / math.sqrt(h))
    t["model.norm.weight"] = rnd(h, std=0.2)
    # Eight layers of fp32 arithmetic leave a relative difference of a few 1e-6 between transformers'
    # chunked prefill and a token-by-token recurrence; a head of std 6/sqrt(h) gave logits near 25 and
    # absolute differences up to 1.1e-4. This scale keeps the top logits near 10, margins well above the
    # 1e-4 tolerance, and the comparison about the model rather than fp32 rounding at large magnitudes.
    t["lm_head.weight"] = rnd(vocab, h, std=2.5 / math.sqrt(h))
    # Multi-token-prediction weights, as the hub checkpoint has them; inference ignores them.
    t["mtp.fc.weight"] = rnd(h, 2 * h, std=0.1)
    t["mtp.norm.weight"] = rnd(h, std=0.2)
    t["mtp.pre_fc_norm_embedding.weight"] = rnd(h, std=0.2)
    t["mtp.pre_fc_norm_hidden.weight"] = rnd(h, std=0.2)
    return t


def make_qwen3next(out_root, name, cfg_kwargs, dtype, n_shards, hub_style, seed):
    from transformers import AutoModelForCausalLM, Qwen3NextConfig

    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    save_sharded(qwen3next_tensors(cfg_kwargs, gen, dtype), out_dir, n_shards)

    def to_config(kw):
        theta = kw.pop("rope_theta")
        prf = kw.pop("partial_rotary_factor")
        interval = kw.pop("full_attention_interval")
        kw["layer_types"] = ["linear_attention" if (i + 1) % interval else "full_attention"
                             for i in range(kw["num_hidden_layers"])]
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": prf}
        return Qwen3NextConfig(**kw)

    write_configs(out_dir, cfg_kwargs, dtype, hub_style, "Qwen3NextForCausalLM", "qwen3_next", "4.57.0.dev0",
                  to_config, {"eos_token_id": cfg_kwargs["eos_token_id"], "do_sample": False})

    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    model.eval()
    print(name, "loaded:", type(model).__name__, "layer types", model.config.layer_types)
    vocab = cfg_kwargs["vocab_size"]
    pgen = torch.Generator().manual_seed(seed + 1)
    prompts = [
        [17],
        torch.randint(0, vocab, (7,), generator=pgen).tolist(),
        torch.randint(0, vocab, (70,), generator=pgen).tolist(),  # more than one 64-token chunk
        torch.randint(0, vocab, (300,), generator=pgen).tolist(),
    ]
    # Per-layer hidden states of the 7-token prompt, to localise a mismatch.
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompts[1]]), output_hidden_states=True)
    write_reference(model, name, out_dir, prompts,
                    {"hidden_states_prompt1": [hs[0].tolist() for hs in out.hidden_states]})


TOKENIZER_CORPUS = [
    "Hello world", "Hello, world!", "hello world", " leading space", "trailing space ", "  two leading",
    "The quick brown fox jumps over the lazy dog.", "I'm sure you're right, they've said we'll go.",
    "I'M SURE YOU'RE RIGHT, THEY'VE SAID WE'LL GO.", "It'S ThE CaSe'Ll 'D", "don't DON'T Don'T",
    "1234567890", "3.14159265358979", "x = 100000000000000000000", "2026-11-24 22:21:51", "$1,234.56",
    "İstanbul ılık ışık İİ ıı", "Iğdır'da kış", "DİYARBAKIR", "ß straße STRASSE",
    "Привет, как дела?", "Ελληνικά γράμματα", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया",
    "こんにちは世界", "你好，世界！", "我爱自然语言处理。", "한국어 텍스트입니다", "ภาษาไทย",
    "Tiếng Việt có dấu", "ქართული", "Հայերեն", "አማርኛ", "ᚠᚢᚦᚨᚱᚲ",
    "😀", "👍🏽", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇩🇪🇯🇵", "❤️‍🔥", "emoji😀in😀text",
    "e\u0301 combining", "n\u0303 and \u00f1", "A\u030a vs \u00c5", "\u1e9b\u0323", "Z\u0351\u0311a\u0308\u0316lgo",
    "\t tab", "a\tb\tc", "line1\nline2", "line1\r\nline2", "\r\r\n\n", "   \n   \n", "trailing\n\n\n",
    "many     spaces", "\u00a0nbsp\u00a0", "\u3000ideographic space", "zero\u200bwidth", "\u2028sep",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "#include <stdio.h>\nint main() { printf(\"hi\\n\"); }", "SELECT * FROM t WHERE a >= 10;",
    "<div class=\"a\">x</div>", "{\"key\": [1, 2, 3], \"v\": null}", "https://example.com/a?b=c&d=e",
    "path/to/file.txt", "C:\\Windows\\System32", "a+b=c; a-b=d; a*b/c", "x**2 + y**2 == z**2",
    "<|im_start|>user\nHi<|im_end|>", "text<|endoftext|>more", "<think>\nreasoning\n</think>\n\nanswer",
    "<|im_start|><|im_start|>", "<tool_call>{}</tool_call>", "not a <|special|> token", "<|im_start",
    "Supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 300, "ab" * 150, "Donaudampfschifffahrtsgesellschaftskapitän", "x" * 50 + " " + "y" * 50,
    "............", "!!!???", "---===---", "''''", "\"quoted\"", "(parentheses)", "[brackets]",
    "café naïve résumé coöperate", "Ångström", "ﬁ ligature", "①②③", "Ⅻ roman", "½ ¾",
    "€£¥₹₿", "©®™", "→ ← ↑ ↓", "∀x∈ℝ: x²≥0", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚", "\u0000nul", "\x7fdel",
    "mixed English and 中文 together", "한글 and English", "numbers 12 345 6789 and 0.5",
    "snake_case_identifier", "camelCaseIdentifier", "SCREAMING_CASE", "kebab-case-id",
    "Hello\u200d\u200cjoin", "a\u0300\u0301\u0302\u0303\u0304", "ǅ titlecase", "\ufeffBOM",
    "The year 1999 and 2000s", "  \t\n mixed whitespace \t\n  ", "end.",
]

CHAT_CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hello!"}], "enable_thinking": True},
    {"messages": [{"role": "user", "content": "Hello!"}], "enable_thinking": False},
    {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]},
    {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "2+2?"}],
     "enable_thinking": False},
    {"messages": [{"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "<think>\nsimple sum\n</think>\n\n4"},
                  {"role": "user", "content": "And 3+3?"}]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "How are you?"}], "enable_thinking": False},
    {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                  {"role": "assistant", "content": "<think>x</think>b"}, {"role": "user", "content": "c"},
                  {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}]},
    {"messages": [{"role": "user", "content": "Q"},
                  {"role": "assistant", "content": "A", "reasoning_content": "because"}]},
    {"messages": [{"role": "user", "content": "Q"},
                  {"role": "assistant", "content": "<think>\n\nthought\n\n</think>\n\n\nA"}],
     "add_generation_prompt": False},
    {"messages": [{"role": "user", "content": "Unicode: 你好 😀 İı"}], "enable_thinking": True},
    {"messages": [{"role": "user", "content": "multi\nline\n\ttabbed"},
                  {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}],
     "enable_thinking": False},
    {"messages": [{"role": "system", "content": "sys one"}, {"role": "user", "content": "u1"},
                  {"role": "system", "content": "sys two"}, {"role": "user", "content": "u2"}]},
]


def make_tokenizer_refs(tok_dir, out_root):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    cases = []
    for text in TOKENIZER_CORPUS:
        ids = tok.encode(text, add_special_tokens=True).ids
        cases.append({"text": text, "ids": ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False)})
    print("tokenizer corpus:", len(cases), "strings")
    with open(os.path.join(out_root, "tokenizer_corpus.json"), "w") as f:
        json.dump({"tokenizers_version": __import__("tokenizers").__version__, "cases": cases}, f,
                  ensure_ascii=False, indent=1)


def make_chat_refs(tok_dir, out_root):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cases = []
    for conv in CHAT_CONVERSATIONS:
        kwargs = {"add_generation_prompt": conv.get("add_generation_prompt", True)}
        if "enable_thinking" in conv:
            kwargs["enable_thinking"] = conv["enable_thinking"]
        text = tok.apply_chat_template(conv["messages"], tokenize=False, **kwargs)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        cases.append({"messages": conv["messages"], "kwargs": kwargs, "text": text, "ids": ids})
    print("chat conversations:", len(cases))
    with open(os.path.join(out_root, "chat_templates.json"), "w") as f:
        json.dump({"transformers_version": __import__("transformers").__version__, "cases": cases}, f,
                  ensure_ascii=False, indent=1)


@torch.no_grad()
def make_bf16_cuda_refs(out_root, name):
    """The same prompts through transformers in bf16 on the GPU: the reference for pinmoe's GPU path with
    bf16 weights (bf16 activations there, so ids may part where the fp32 margins are small). Each top
    logit also carries `fp32_logit`: transformers in fp32 (CPU) on the same tokens (the prompt and the
    bf16 run's own continuation, teacher forced), so that a test can measure how far bf16 arithmetic
    alone moves each logit and scale its tolerance to that."""
    from transformers import AutoModelForCausalLM
    out_dir = os.path.join(out_root, name)
    fp32_ref = json.load(open(os.path.join(out_dir, "reference.json")))
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16).to("cuda")
    model.eval()
    fp32_model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    fp32_model.eval()
    cases = []
    for c in fp32_ref["cases"]:
        gen, tops, _ = greedy_reference(model, c["prompt_ids"], device="cuda")
        forced = torch.tensor([c["prompt_ids"] + gen[:-1]])
        fp32_logits = fp32_model(input_ids=forced).logits[0].float()
        first = len(c["prompt_ids"]) - 1
        for step, top in enumerate(tops):
            for t in top:
                t["fp32_logit"] = float(fp32_logits[first + step, t["id"]])
        agree = sum(a == b for a, b in zip(gen, c["greedy_ids"]))
        print(f"{name} bf16 cuda: prompt {len(c['prompt_ids'])} -> first {agree_prefix(gen, c['greedy_ids'])} "
              f"ids equal to fp32 ({agree}/{NEW_TOKENS} positions)")
        cases.append({"prompt_ids": c["prompt_ids"], "greedy_ids": gen, "top_logits": tops})
    with open(os.path.join(out_dir, "reference_bf16_cuda.json"), "w") as f:
        json.dump({"model": name, "transformers_version": __import__("transformers").__version__,
                   "torch_version": torch.__version__, "compute": "bf16 cuda",
                   "device": torch.cuda.get_device_name(0), "new_tokens": NEW_TOKENS, "cases": cases}, f)


def agree_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer-dir", required=True)
    ap.add_argument("--only", default="", help="qwen3moe, qwen3next, text or bf16cuda: make only those references")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(8)

    base = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 48,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
            "num_experts": 8, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "norm_topk_prob": True, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "max_position_embeddings": 1024, "tie_word_embeddings": False, "sliding_window": None,
            "use_sliding_window": False, "max_window_layers": 3, "bos_token_id": 1000,
            "eos_token_id": 1001}
    b = dict(base)
    b.update({"tie_word_embeddings": True, "norm_topk_prob": False, "mlp_only_layers": [1],
              "num_experts": 6, "num_experts_per_tok": 3, "rope_theta": 1000000.0,
              "eos_token_id": [1001, 1002]})
    if args.only in ("", "qwen3moe"):
        make_qwen3moe(args.out, "qwen3moe-f32", base, torch.float32, n_shards=3, hub_style=True, seed=1234)
        make_qwen3moe(args.out, "qwen3moe-bf16", b, torch.bfloat16, n_shards=1, hub_style=False, seed=99)
    nxt = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
           "shared_expert_intermediate_size": 48, "num_hidden_layers": 8, "full_attention_interval": 4,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
           "partial_rotary_factor": 0.25, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
           "linear_key_head_dim": 16, "linear_value_head_dim": 24, "linear_conv_kernel_dim": 4,
           "num_experts": 8, "num_experts_per_tok": 3, "decoder_sparse_step": 1, "mlp_only_layers": [],
           "norm_topk_prob": True, "rms_norm_eps": 1e-6, "rope_theta": 10000000.0,
           "max_position_embeddings": 4096, "tie_word_embeddings": False, "bos_token_id": 1000,
           "eos_token_id": 1001}
    if args.only in ("", "qwen3next"):
        make_qwen3next(args.out, "qwen3next-f32", nxt, torch.float32, n_shards=3, hub_style=True,
                       seed=4321)
        n2 = dict(nxt)
        n2.update({"norm_topk_prob": False, "num_experts": 6, "num_experts_per_tok": 2,
                   "eos_token_id": [1001, 1002]})
        make_qwen3next(args.out, "qwen3next-bf16", n2, torch.bfloat16, n_shards=1, hub_style=False,
                       seed=77)
    if args.only in ("", "bf16cuda") and torch.cuda.is_available():
        for name in ("qwen3moe-bf16", "qwen3next-bf16"):
            make_bf16_cuda_refs(args.out, name)
    if args.only in ("", "text"):
        make_tokenizer_refs(args.tokenizer_dir, args.out)
        make_chat_refs(args.tokenizer_dir, args.out)


if __name__ == "__main__":
    main()
