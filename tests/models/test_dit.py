import pytest
import torch

from rfengine.models import MODEL_SIZES, build_model, drop_labels
from rfengine.models.dit import sincos_pos_embed_2d


def tiny(**kw):
    args = dict(in_channels=3, input_size=(8, 12), num_classes=5)
    args.update(kw)
    return build_model("DiT-T/2", **args)


def test_shapes_non_square_and_learn_sigma():
    m = tiny()
    x = torch.randn(3, 3, 8, 12)
    assert m(x, torch.rand(3), torch.tensor([0, 4, 5])).shape == (3, 3, 8, 12)
    ms = tiny(learn_sigma=True)
    assert ms.final_layer.linear.out_features == 2 * 2 * 6
    assert ms(x, torch.rand(3), torch.tensor([0, 1, 2])).shape == (3, 3, 8, 12)


def test_adaln_zero_initial_output_is_zero_and_blocks_identity():
    m = tiny()
    out = m(torch.randn(2, 3, 8, 12), torch.rand(2), torch.tensor([1, 2]))
    assert torch.count_nonzero(out) == 0
    for blk in m.blocks:
        assert torch.count_nonzero(blk.adaLN_modulation[-1].weight) == 0


def test_parameter_names_match_public_checkpoints():
    m = build_model("DiT-XL/2", in_channels=4, input_size=32, num_classes=1000, learn_sigma=True)
    keys = set(m.state_dict())
    for k in ["pos_embed", "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
              "y_embedder.embedding_table.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias",
              "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "blocks.27.adaLN_modulation.1.weight",
              "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias"]:
        assert k in keys, k
    assert m.y_embedder.embedding_table.weight.shape == (1001, 1152)     # null class row
    assert m.final_layer.linear.weight.shape == (2 * 2 * 8, 1152)        # learn_sigma doubles output
    n = sum(p.numel() for p in m.parameters())
    assert abs(n / 1e6 - 675.1) < 0.5  # DiT-XL/2's published size


def test_registry_sizes():
    assert set(MODEL_SIZES) >= {f"DiT-{s}/{p}" for s in "SBL" for p in (2, 4, 8)} | {"DiT-XL/2", "DiT-T/2"}
    with pytest.raises(ValueError, match="arch"):
        build_model("DiT-Z/2", in_channels=1, input_size=8, num_classes=0)
    with pytest.raises(ValueError, match="divisible"):
        build_model("DiT-T/4", in_channels=1, input_size=10, num_classes=0)


def test_class_conditioning_and_null_class_matter():
    m = tiny()
    for p in m.parameters():  # break adaLN-Zero so the output depends on the input
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 3, 8, 12), torch.rand(2)
    a = m(x, t, torch.tensor([0, 0]))
    b = m(x, t, torch.tensor([1, 5]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="y"):
        m(x, t, None)
    unc = tiny(num_classes=0)
    assert unc.y_embedder is None and unc(x, t).shape == x.shape


def test_math_and_sdpa_attention_agree():
    m1 = tiny(attention="sdpa")
    m2 = tiny(attention="math")
    for p in m1.parameters():
        torch.nn.init.normal_(p, std=0.05)
    m2.load_state_dict(m1.state_dict())
    x, t, y = torch.randn(2, 3, 8, 12), torch.rand(2), torch.tensor([1, 2])
    torch.testing.assert_close(m1(x, t, y), m2(x, t, y), atol=1e-5, rtol=1e-4)


def test_drop_labels_rate():
    y = torch.zeros(20000, dtype=torch.long)
    d = drop_labels(y, 0.1, 10)
    assert abs((d == 10).float().mean().item() - 0.1) < 0.01
    assert torch.equal(drop_labels(y, 0.0, 10), y)


def test_pos_embed_is_fixed_sincos():
    m = tiny()
    table = torch.from_numpy(sincos_pos_embed_2d(64, (4, 6))).float()
    torch.testing.assert_close(m.pos_embed[0], table)
    assert not m.pos_embed.requires_grad
    assert table.abs().max() <= 1.0
