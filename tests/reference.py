"""Independent, explicit forward passes of the corrected BERT and ViT, written from methods.md.

Everything is materialised and looped the way the papers' reference code does it: the n×n attention matrix, the
per-sequence ContraNorm similarity over real tokens, DGN's N×G×d grouped tensor through `F.batch_norm`. Only the
weights are read from the model under test; none of its forward code is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _heads(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, seq_len, width = tensor.shape
    return tensor.view(batch, seq_len, num_heads, width // num_heads).transpose(1, 2)


def _corrected_layers(config) -> set[int]:
    return set(range(config.num_hidden_layers)) if config.correction_layers is None else set(config.correction_layers)


def _strength(config, field: str, module) -> float | torch.Tensor:
    """The configured strength, times `strength_gate_scale` × the module's gates when they are learned: a float, or a
    `(gates, 1, 1)` tensor (one per head at the attention site, else one)."""
    if module.strength_gate is None:
        return getattr(config, field)
    return getattr(config, field) * config.strength_gate_scale * module.strength_gate[:, None, None]


def attention(config, layer_idx, q_proj, k_proj, v_proj, x, real, first_values, corrections):
    """Per-head materialised softmax attention with centered / NeuTRENO corrections; returns merged context, V.

    `corrections` is the module's attention-site ModuleDict, read for its learned gates only."""
    heads = config.num_attention_heads
    q, k, v = _heads(q_proj(x), heads), _heads(k_proj(x), heads), _heads(v_proj(x), heads)
    scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
    scores = scores.masked_fill(~real[:, None, None, :], float("-inf"))
    context = torch.softmax(scores, dim=-1) @ v
    if layer_idx in _corrected_layers(config):
        if "centered" in config.corrections:
            for b in range(x.shape[0]):
                mean = v[b][:, real[b]].mean(dim=1, keepdim=True)  # (H, 1, d_h) over real keys
                context[b] = context[b] - _strength(config, "centered_scale", corrections["centered"]) * mean
        if "neutreno" in config.corrections and layer_idx >= 1:
            context = context + _strength(config, "neutreno_lambda", corrections["neutreno"]) * (first_values - v)
    return context.transpose(1, 2).reshape(x.shape), v


def contranorm(config, layer_idx, x, real, corrections):
    if "contranorm" not in config.corrections or layer_idx not in _corrected_layers(config):
        return x
    scale = _strength(config, "contranorm_scale", corrections["contranorm"])
    if isinstance(scale, torch.Tensor):
        scale = scale.view(())
    out = x.clone()
    for b in range(x.shape[0]):
        tokens = x[b][real[b]]
        directions = tokens / tokens.norm(dim=-1, keepdim=True)
        similarity = torch.softmax(directions @ directions.T / config.contranorm_tau, dim=-1)
        out[b][real[b]] = tokens - scale * similarity @ tokens
    return out


def dgn(config, layer_idx, module, x, real, training):
    """DGN as in the reference code: N×G×d grouped features through one BatchNorm over G·d channels."""
    if "dgn" not in config.corrections or layer_idx not in _corrected_layers(config):
        return x
    tokens = x[real]  # (N, d)
    assignment = torch.softmax(tokens @ module.assign.weight.T + module.assign.bias, dim=-1)  # (N, G)
    grouped = (assignment[:, :, None] * tokens[:, None, :]).reshape(tokens.shape[0], -1)
    normalized = F.batch_norm(
        grouped,
        module.running_mean.clone().flatten(),
        module.running_var.clone().flatten(),
        module.weight.flatten(),
        module.bias.flatten(),
        training=training,
        momentum=0.0,
        eps=module.eps,
    ).view(tokens.shape[0], config.dgn_groups, -1)
    out = x.clone()
    lamda = _strength(config, "dgn_lambda", module)
    out[real] = tokens + (lamda.view(()) if isinstance(lamda, torch.Tensor) else lamda) * normalized.sum(dim=1)
    return out


def fuse(config, fusion, layer_outputs):
    if config.fusion == "none":
        return layer_outputs[-1]
    fused = _fuse_without_gate(config, fusion, layer_outputs)
    if getattr(fusion, "strength_gate", None) is None:
        return fused
    weight = config.strength_gate_scale * fusion.strength_gate
    return (1 - weight) * layer_outputs[-1] + weight * fused


def _fuse_without_gate(config, fusion, layer_outputs):
    if config.fusion == "max":
        result = layer_outputs[0]
        for output in layer_outputs[1:]:
            result = torch.maximum(result, output)
        return result
    if config.fusion == "concat":
        return torch.cat(layer_outputs, dim=-1) @ fusion.weight.T + fusion.bias
    logits = torch.stack(
        [output @ fusion.weight + bias for output, bias in zip(layer_outputs, fusion.layer_bias, strict=True)]
    )
    weights = torch.softmax(logits, dim=0)
    return sum(weight[..., None] * output for weight, output in zip(weights, layer_outputs, strict=True))


def bert_forward(model, input_ids, attention_mask):
    """`last_hidden_state` of a CenteredBertModel, recomputed explicitly (dropout off)."""
    config = model.config
    real = attention_mask.bool()
    x = model.embeddings(input_ids=input_ids)
    first_values = _heads(model.encoder.layer[0].attention.self.value(x), config.num_attention_heads)
    layer_outputs = []
    for i, layer in enumerate(model.encoder.layer):
        sa = layer.attention.self
        context, _ = attention(config, i, sa.query, sa.key, sa.value, x, real, first_values, sa.corrections)
        h = layer.attention.output.dense(context) + x
        y = layer.attention.output.LayerNorm(contranorm(config, i, h, real, layer.attention.output.corrections))
        ffn = layer.output.dense(F.gelu(layer.intermediate.dense(y)))
        x = layer.output.LayerNorm(ffn + y)
        x = dgn(config, i, getattr(layer.corrections, "dgn", None), x, real, model.training)
        layer_outputs.append(x)
    return fuse(config, model.encoder.fusion, layer_outputs)


def vit_forward(model, pixel_values):
    """`last_hidden_state` of a CenteredViTModel, recomputed explicitly (dropout off, no padding)."""
    config = model.config
    x = model.embeddings(pixel_values)
    real = torch.ones(x.shape[:2], dtype=torch.bool)
    first = model.layers[0]
    first_input = first.layernorm_before(contranorm(config, 0, x, real, first.norm_corrections))
    first_values = _heads(first.attention.v_proj(first_input), config.num_attention_heads)
    layer_outputs = []
    for i, layer in enumerate(model.layers):
        at, norm_corrections = layer.attention, layer.norm_corrections
        u = layer.layernorm_before(contranorm(config, i, x, real, norm_corrections))
        context, _ = attention(config, i, at.q_proj, at.k_proj, at.v_proj, u, real, first_values, at.corrections)
        y = at.o_proj(context) + x
        mlp_input = layer.layernorm_after(contranorm(config, i, y, real, norm_corrections))
        mlp = layer.mlp.fc2(F.gelu(layer.mlp.fc1(mlp_input)))
        x = dgn(config, i, getattr(layer.output_corrections, "dgn", None), mlp + y, real, model.training)
        layer_outputs.append(x)
    last = config.num_hidden_layers - 1
    final_corrections = model.final_norm_corrections
    normed = [model.layernorm(contranorm(config, last, output, real, final_corrections)) for output in layer_outputs]
    return fuse(config, model.fusion, normed)
