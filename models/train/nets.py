"""nets.py: the three model parts in plain PyTorch, with the parameter names,
shapes and arithmetic of diffusers' UNet2DConditionModel and AutoencoderKL and
transformers' CLIPTextModel, so their state_dict() is a diffusers folder's
safetensors as it stands (export.py) and the engine runs them unchanged.

Only the configurations the default model uses are implemented: SD 1.x style
UNet (conv 1x1 proj_in/out, GEGLU feed-forward, "default" resnet time
embedding, flip_sin_to_cos, freq_shift 0), VAE without mid-block attention,
CLIP with quick_gelu and a causal mask. Heads per level follow diffusers'
(mis)naming: `attention_head_dim` is the number of heads.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- shared blocks


class ResnetBlock2D(nn.Module):
    """y = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))"""

    def __init__(self, cin, cout, temb, groups, eps):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        if temb:
            self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.conv_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.conv_shortcut(x) if hasattr(self, "conv_shortcut") else x)


class Downsample2D(nn.Module):
    """3x3 stride-2 conv; the VAE's pads (0, 1, 0, 1) first (padding 0)."""

    def __init__(self, c, padding):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, size=None):
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


def attention(q, k, v, heads, causal=False):
    """q [n, T, C], k/v [n, S, C] -> [n, T, C]; heads are column slices."""
    n, t, c = q.shape
    s = k.shape[1]
    d = c // heads
    q = q.view(n, t, heads, d).transpose(1, 2)
    k = k.view(n, s, heads, d).transpose(1, 2)
    v = v.view(n, s, heads, d).transpose(1, 2)
    sdpa = getattr(F, "scaled_dot_product_attention", None)  # torch >= 2.0 (GPU runs)
    if sdpa is not None and q.is_cuda:
        return sdpa(q, k, v, is_causal=causal).transpose(1, 2).reshape(n, t, c)
    w = (q @ k.transpose(-1, -2)) * (d ** -0.5)
    if causal:
        w = w.masked_fill(torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1),
                          float("-inf"))
    o = w.float().softmax(-1).to(v.dtype) @ v
    return o.transpose(1, 2).reshape(n, t, c)


# ---------------------------------------------------------------- UNet


class Attention(nn.Module):
    """diffusers Attention as the UNet uses it: to_q/k/v without bias, to_out.0."""

    def __init__(self, c, kv_dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(c, c, bias=False)
        self.to_k = nn.Linear(kv_dim, c, bias=False)
        self.to_v = nn.Linear(kv_dim, c, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        return self.to_out[0](attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads))


class GEGLU(nn.Module):
    def __init__(self, c, inner):
        super().__init__()
        self.proj = nn.Linear(c, 2 * inner)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        # net.0 GEGLU, net.1 dropout (no parameters), net.2 Linear
        self.net = nn.ModuleList([GEGLU(c, 4 * c), nn.Identity(), nn.Linear(4 * c, c)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, c, context_dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(c)
        self.attn1 = Attention(c, c, heads)
        self.norm2 = nn.LayerNorm(c)
        self.attn2 = Attention(c, context_dim, heads)
        self.norm3 = nn.LayerNorm(c)
        self.ff = FeedForward(c)

    def forward(self, x, ctx):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), ctx)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    def __init__(self, c, context_dim, heads, groups, depth=1):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.proj_in = nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(c, context_dim, heads) for _ in range(depth)])
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x, ctx):
        n, c, h, w = x.shape
        t = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(n, h * w, c)  # [n, T, C]
        for b in self.transformer_blocks:
            t = b(t, ctx)
        t = t.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return self.proj_out(t) + x


class TimestepEmbedding(nn.Module):
    def __init__(self, c0, temb):
        super().__init__()
        self.linear_1 = nn.Linear(c0, temb)
        self.linear_2 = nn.Linear(temb, temb)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_sinusoid(t, dim):
    """diffusers get_timestep_embedding with flip_sin_to_cos, shift 0: [cos | sin]."""
    half = dim // 2
    freq = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32,
                                                     device=t.device) / half)
    arg = t.float()[:, None] * freq[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], -1)


class UNetLevel(nn.Module):
    """CrossAttnDownBlock2D / DownBlock2D / CrossAttnUpBlock2D / UpBlock2D."""

    def __init__(self, cins, cout, temb, attn, heads, context_dim, groups, eps, down, up):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ci, cout, temb, groups, eps) for ci in cins])
        if attn:
            self.attentions = nn.ModuleList(
                [Transformer2DModel(cout, context_dim, heads, groups) for _ in cins])
        if down:
            self.downsamplers = nn.ModuleList([Downsample2D(cout, 1)])
        if up:
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])


class UNet2DConditionModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        ch, L = cfg["block_out_channels"], len(cfg["block_out_channels"])
        attn = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
        heads = cfg["attention_head_dim"]
        heads = heads if isinstance(heads, list) else [heads] * L
        nl, g, eps, ctx = cfg["layers_per_block"], cfg["norm_num_groups"], cfg["norm_eps"], \
            cfg["cross_attention_dim"]
        temb = 4 * ch[0]
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.down_blocks = nn.ModuleList()
        for l in range(L):
            cins = [ch[l - 1] if l else ch[0]] + [ch[l]] * (nl - 1)
            self.down_blocks.append(UNetLevel(cins, ch[l], temb, attn[l], heads[l], ctx, g, eps,
                                              down=l < L - 1, up=False))
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList([ResnetBlock2D(ch[-1], ch[-1], temb, g, eps)
                                                for _ in range(2)])
        self.mid_block.attentions = nn.ModuleList([Transformer2DModel(ch[-1], ctx, heads[-1], g)])
        self.up_blocks = nn.ModuleList()
        for b in range(L):
            l = L - 1 - b
            prev = ch[min(l + 1, L - 1)]
            skip_last = ch[l - 1] if l else ch[0]
            cins = [(prev if i == 0 else ch[l]) + (skip_last if i == nl else ch[l])
                    for i in range(nl + 1)]
            self.up_blocks.append(UNetLevel(cins, ch[l], temb, attn[l], heads[l], ctx, g, eps,
                                            down=False, up=b < L - 1))
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], cfg["out_channels"], 3, padding=1)

    def forward(self, x, t, ctx):
        """x [n, 4, h, w] latents, t [n] timesteps, ctx [n, 77, context_dim]."""
        temb = self.time_embedding(timestep_sinusoid(t, self.cfg["block_out_channels"][0])
                                   .to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for blk in self.down_blocks:
            for i, r in enumerate(blk.resnets):
                h = r(h, temb)
                if hasattr(blk, "attentions"):
                    h = blk.attentions[i](h, ctx)
                skips.append(h)
            if hasattr(blk, "downsamplers"):
                h = blk.downsamplers[0](h)
                skips.append(h)
        m = self.mid_block
        h = m.resnets[1](m.attentions[0](m.resnets[0](h, temb), ctx), temb)
        for blk in self.up_blocks:
            for i, r in enumerate(blk.resnets):
                h = r(torch.cat([h, skips.pop()], 1), temb)
                if hasattr(blk, "attentions"):
                    h = blk.attentions[i](h, ctx)
            if hasattr(blk, "upsamplers"):
                h = blk.upsamplers[0](h, skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.conv_norm_out(h)))


# ---------------------------------------------------------------- VAE


class VAEMid(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, 0, groups, 1e-6) for _ in range(2)])

    def forward(self, x):
        return self.resnets[1](self.resnets[0](x))


class VAELevel(nn.Module):
    def __init__(self, cins, cout, groups, down, up):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ci, cout, 0, groups, 1e-6) for ci in cins])
        if down:
            self.downsamplers = nn.ModuleList([Downsample2D(cout, 0)])
        if up:
            self.upsamplers = nn.ModuleList([Upsample2D(cout)])


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, L, nl, g = cfg["block_out_channels"], len(cfg["block_out_channels"]), \
            cfg["layers_per_block"], cfg["norm_num_groups"]
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [VAELevel([ch[l - 1] if l else ch[0]] + [ch[l]] * (nl - 1), ch[l], g,
                      down=l < L - 1, up=False) for l in range(L)])
        self.mid_block = VAEMid(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg["latent_channels"], 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for blk in self.down_blocks:
            for r in blk.resnets:
                h = r(h)
            if hasattr(blk, "downsamplers"):
                h = blk.downsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, L, nl, g = cfg["block_out_channels"], len(cfg["block_out_channels"]), \
            cfg["layers_per_block"], cfg["norm_num_groups"]
        rch = ch[::-1]
        self.conv_in = nn.Conv2d(cfg["latent_channels"], ch[-1], 3, padding=1)
        self.mid_block = VAEMid(ch[-1], g)
        self.up_blocks = nn.ModuleList(
            [VAELevel([rch[i - 1] if i else rch[0]] + [rch[i]] * nl, rch[i], g,
                      down=False, up=i < L - 1) for i in range(L)])
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for blk in self.up_blocks:
            for r in blk.resnets:
                h = r(h)
            if hasattr(blk, "upsamplers"):
                h = blk.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        lc = cfg["latent_channels"]
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * lc, 2 * lc, 1)
        self.post_quant_conv = nn.Conv2d(lc, lc, 1)

    def encode(self, x):
        """x [n, 3, H, W] in [-1, 1] -> (mean, logvar) [n, lc, H/f, W/f]."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


# ---------------------------------------------------------------- CLIP text encoder


class CLIPAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x),
                                       self.heads, causal=True))


class CLIPMLP(nn.Module):
    def __init__(self, d, inter):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, inter), nn.Linear(inter, d)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class CLIPEncoderLayer(nn.Module):
    def __init__(self, d, heads, inter, eps):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.self_attn = CLIPAttention(d, heads)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = CLIPMLP(d, inter)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPTextModel(nn.Module):
    """state_dict names: text_model.embeddings..., text_model.encoder.layers.N...,
    text_model.final_layer_norm. Output: the last hidden state after the final
    LayerNorm, [n, 77, hidden_size], the UNet's context as in SD 1.x."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        tm = self.text_model = nn.Module()
        tm.embeddings = nn.Module()
        tm.embeddings.token_embedding = nn.Embedding(cfg["vocab_size"], d)
        tm.embeddings.position_embedding = nn.Embedding(cfg["max_position_embeddings"], d)
        tm.encoder = nn.Module()
        tm.encoder.layers = nn.ModuleList(
            [CLIPEncoderLayer(d, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
             for _ in range(cfg["num_hidden_layers"])])
        tm.final_layer_norm = nn.LayerNorm(d, eps=eps)
        nn.init.normal_(tm.embeddings.token_embedding.weight, std=0.02)
        nn.init.normal_(tm.embeddings.position_embedding.weight, std=0.01)

    def forward(self, ids):
        tm = self.text_model
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = tm.embeddings.token_embedding(ids) + tm.embeddings.position_embedding(pos)[None]
        for layer in tm.encoder.layers:
            x = layer(x)
        return tm.final_layer_norm(x)
