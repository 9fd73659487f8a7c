"""Small attention modules, one per spelling of the eager chain (tests/test_sdpa_*.py).

Every class projects `x` to q, k, v (so parameter gradients exist), splits
heads, runs its own spelling of the attention chain, and merges the heads.
`REWRITTEN` lists the classes rulepacks/sdpa.adr must rewrite (with the rule
expected); `REFUSED` the ones it must leave alone, with why.
"""

HEAD = '''\
import math

import torch
from torch import nn
from torch.nn import functional as F


class _Base(nn.Module):
    def __init__(self, dim=16, heads=2, p=0.0):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.p = p
        self.qkv = nn.Linear(dim, 3 * dim)
        self.drop = nn.Dropout(p)

    def split(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return [t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v)]

'''

CLASSES = {
    # name: (forward body, rule expected or None, reason when refused)
    "MatmulDivAddDrop": ('''\
    def forward(self, x, mask):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = scores + mask
        probs = F.softmax(scores, dim=-1)
        probs = self.drop(probs)
        out = torch.matmul(probs, v)
        return out.transpose(1, 2).flatten(2)
''', "sdpa:matmul_tm1m2_div_add_softmax_drop"),
    "AtMulTensorSoftmaxFDrop": ('''\
    def forward(self, x):
        q, k, v = self.split(x)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        attn = F.dropout(attn, p=self.p, training=self.training)
        out = attn @ v
        return out.transpose(1, 2).flatten(2)
''', "sdpa:at_tm2m1_mul_add_tsoftmax_fdrop"),
    "BmmFillUpcast": ('''\
    def forward(self, x, mask):
        q, k, v = self.split(x)
        b, h, n, d = q.shape
        q, k, v = q.reshape(b * h, n, d), k.reshape(b * h, n, d), v.reshape(b * h, n, d)
        w = torch.bmm(q, k.transpose(1, 2))
        w = w.masked_fill(mask, float("-inf"))
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.bmm(w, v)
        return out.reshape(b, h, n, d).transpose(1, 2).flatten(2)
''', "sdpa:bmm_t12_noscale_fill_upcast_nodrop"),
    "TimmPreScaled": ('''\
    def forward(self, x):
        q, k, v = self.split(x)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        attn = self.drop(attn)
        x = attn @ v
        return x.transpose(1, 2).flatten(2)
''', "sdpa:at_tm2m1_noscale_add_tsoftmax_drop"),
    "TimmFusedBranch": ('''\
    fused_attn = False

    def forward(self, x):
        q, k, v = self.split(x)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.drop.p if self.training else 0.)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.drop(attn)
            x = attn @ v
        return x.transpose(1, 2).flatten(2)
''', "sdpa:at_tm2m1_noscale_add_tsoftmax_drop"),
    "EinsumSpacedMulDrop": ('''\
    def forward(self, x):
        q, k, v = self.split(x)
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * self.scale
        attn = sim.softmax(dim=-1)
        attn = self.drop(attn)
        out = torch.einsum("b h i j, b h j d -> b h i d", attn, v)
        return out.transpose(1, 2).flatten(2)
''', "sdpa:einsum_mul_add_tsoftmax_drop"),
    "EinsumEllipsisDivAddUpcast": ('''\
    def forward(self, x, mask):
        q, k, v = self.split(x)
        s = torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(self.head_dim)
        s = s + mask
        p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.einsum("...qk,...kd->...qd", p, v)
        return out.transpose(1, 2).flatten(2)
''', "sdpa:einsum_div_add_upcast_nodrop"),
    "ReturnsProbs": ('''\
    def forward(self, x):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        probs = F.softmax(scores, dim=-1)
        out = torch.matmul(probs, v)
        return out.transpose(1, 2).flatten(2), probs
''', None),
    "OutputAttentions": ('''\
    def forward(self, x, output_attentions=False):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        probs = F.softmax(scores, dim=-1)
        probs = self.drop(probs)
        out = torch.matmul(probs, v)
        out = out.transpose(1, 2).flatten(2)
        return (out, probs) if output_attentions else (out,)
''', "sdpa:matmul_tm2m1_div_add_softmax_drop"),
    "HeadMask": ('''\
    def forward(self, x, head_mask=None):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        probs = F.softmax(scores, dim=-1)
        if head_mask is not None:
            probs = probs * head_mask
        out = torch.matmul(probs, v)
        return out.transpose(1, 2).flatten(2)
''', "sdpa:matmul_tm2m1_div_add_softmax_nodrop"),
    "InlinedValue": ('''\
    def values(self, v):
        return torch.tanh(v)

    def forward(self, x):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-2, -1))
        probs = F.softmax(scores, dim=-1)
        out = torch.matmul(probs, self.values(v))
        return out.transpose(1, 2).flatten(2)
''', None),
    "RankDependentTranspose": ('''\
    def forward(self, x):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        probs = F.softmax(scores, dim=-1)
        out = torch.matmul(probs, v)
        return out.transpose(1, 2).flatten(2)
''', None),
    "EinsumHeadsSecond": ('''\
    def forward(self, x):
        q, k, v = self.split(x)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        s = torch.einsum("blhd,bshd->blhs", q, k) * self.scale
        p = s.softmax(dim=-1)
        out = torch.einsum("blhs,bshd->blhd", p, v)
        return out.flatten(2)
''', None),
    "EinsumTransposedScores": ('''\
    def forward(self, x):
        q, k, v = self.split(x)
        s = torch.einsum("bhid,bhjd->bhji", q, k) * self.scale
        p = s.softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", p, v)
        return out.transpose(1, 2).flatten(2)
''', None),
    "OptionalMaskAdd": ('''\
    def forward(self, x, attention_mask=None):
        q, k, v = self.split(x)
        attention_scores = torch.matmul(q, k.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.head_dim)
        if attention_mask is not None:
            attention_scores = attention_scores + attention_mask
        attention_probs = nn.functional.softmax(attention_scores, dim=-1)
        attention_probs = self.drop(attention_probs)
        context = torch.matmul(attention_probs, v)
        return context.transpose(1, 2).flatten(2)
''', "sdpa:matmul_tm1m2_div_add_softmax_drop"),
    "OptionalMaskFill": ('''\
    def forward(self, x, mask=None):
        q, k, v = self.split(x)
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * self.scale
        if mask is not None:
            sim = sim.masked_fill(mask, float("-inf"))
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b h i j, b h j d -> b h i d", attn, v)
        return out.transpose(1, 2).flatten(2)
''', "sdpa:einsum_mul_fill_tsoftmax_nodrop"),
    # Optional masks the rewrite cannot drop with the `if` (S330, or no match):
    "OptionalMaskElse": ('''\
    def forward(self, x, attention_mask=None):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            scores = scores + attention_mask
        else:
            scores = scores * 0.5
        probs = F.softmax(scores, dim=-1)
        return torch.matmul(probs, v).transpose(1, 2).flatten(2)
''', None),
    "OptionalMaskOtherGuard": ('''\
    def forward(self, x, attention_mask=None):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if self.p > 0:
            scores = scores + attention_mask
        probs = F.softmax(scores, dim=-1)
        return torch.matmul(probs, v).transpose(1, 2).flatten(2)
''', None),
    "OptionalMaskTwoStatements": ('''\
    def forward(self, x, attention_mask=None):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            scores = scores + attention_mask
            scores = scores * 0.5
        probs = F.softmax(scores, dim=-1)
        return torch.matmul(probs, v).transpose(1, 2).flatten(2)
''', "sdpa:matmul_tm1m2_div_add_softmax_nodrop"),
    "OptionalMaskReassigned": ('''\
    def forward(self, x, attention_mask=None):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            scores = scores + attention_mask
        attention_mask = None
        probs = F.softmax(scores, dim=-1)
        return torch.matmul(probs, v).transpose(1, 2).flatten(2)
''', "sdpa:matmul_tm1m2_div_add_softmax_nodrop"),
    "OptionalMaskOtherName": ('''\
    def forward(self, x, attention_mask=None, bias=None):
        q, k, v = self.split(x)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            scores = scores + bias
        probs = F.softmax(scores, dim=-1)
        return torch.matmul(probs, v).transpose(1, 2).flatten(2)
''', None),
}


def source() -> str:
    parts = [HEAD]
    for name, (body, _) in CLASSES.items():
        parts.append(f"class {name}(_Base):\n{body}\n")
    return "\n".join(parts)


REWRITTEN = {name: rule for name, (_, rule) in CLASSES.items() if rule}
REFUSED = [name for name, (_, rule) in CLASSES.items() if not rule]
