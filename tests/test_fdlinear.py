import numpy as np
import pytest
import torch

from skinflow.models.fdlinear import FDLinear, dve_head_parameters, frequency_groups


@pytest.mark.parametrize("in_f,out_f", [(7, 5), (9, 13), (1280, 3420), (3420, 1280)])
def test_from_linear_reproduces_the_linear(in_f, out_f):
    torch.manual_seed(0)
    linear = torch.nn.Linear(in_f, out_f)
    layer = FDLinear.from_linear(linear, num_groups=min(64, out_f * (in_f // 2 + 1)))
    x = torch.randn(2, 11, in_f)
    with torch.no_grad():
        assert (layer(x) - linear(x)).abs().max().item() < 1e-5
        assert (layer(x.reshape(-1, in_f)) - linear(x.reshape(-1, in_f))).abs().max().item() < 1e-5


@pytest.mark.parametrize("k", [1, 2, 3, 7, 10, 64, 5 * 5])
def test_groups_partition_coefficients_and_bases_sum_to_weight(k):
    torch.manual_seed(k)
    linear = torch.nn.Linear(9, 5)  # 5 x 5 = 25 coefficients: most K do not divide it
    layer = FDLinear.from_linear(linear, num_groups=min(k, 25))
    groups = layer.group_index
    assert groups.shape == (5, 5)
    sizes = torch.bincount(groups.flatten(), minlength=layer.num_groups)
    assert sizes.sum() == 25 and sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
    bases = torch.stack([layer.basis(i) for i in range(layer.num_groups)])
    assert torch.allclose(bases.sum(0), linear.weight, atol=1e-5)


def test_groups_are_rings_of_increasing_frequency():
    groups = frequency_groups(8, 8, 4)
    assert groups[0, 0] == 0  # the DC coefficient is in the lowest ring
    assert groups[4, 4] == 3  # the highest (Nyquist, Nyquist) in the highest
    with pytest.raises(ValueError, match="between 1 and"):
        frequency_groups(4, 4, 13)


def test_bases_are_frequency_disjoint_outside_the_self_conjugate_columns():
    # irfft2 makes the fi = 0 and fi = I/2 columns Hermitian, so a conjugate pair split across two groups
    # shares energy there; every other coefficient belongs to exactly one basis.
    layer = FDLinear.from_linear(torch.nn.Linear(8, 6), num_groups=3)
    spectra = [torch.fft.rfft2(layer.basis(k)) for k in range(3)]
    inner = torch.zeros_like(layer.group_index, dtype=torch.bool)
    inner[:, 1:-1] = True
    for k, spectrum in enumerate(spectra):
        outside = (layer.group_index != k) & inner
        assert spectrum[outside].abs().max() < 1e-4
        assert spectrum[(layer.group_index == k) & inner].abs().max() > 1e-3


def packed(layer, lengths, seed=0):
    torch.manual_seed(seed)
    tokens = [torch.randn(n, layer.in_features) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    return tokens, cu


def trained_layer(seed=0):
    torch.manual_seed(seed)
    layer = FDLinear.from_linear(torch.nn.Linear(12, 10), num_groups=5)
    with torch.no_grad():
        for head in (layer.to_groups, layer.to_in, layer.to_out):
            head.weight.normal_(0, 0.5)
    return layer


def test_packed_output_of_an_image_does_not_depend_on_its_neighbours():
    layer = trained_layer()
    tokens, cu = packed(layer, [5, 9, 3])
    together = layer(torch.cat(tokens), cu_seqlens=cu)
    alone = layer(tokens[1], cu_seqlens=torch.tensor([0, 9]))
    assert torch.allclose(together[5:14], alone, atol=1e-6)
    # and differs from treating the whole pack as one image
    assert not torch.allclose(layer(torch.cat(tokens))[5:14], alone, atol=1e-4)


def test_batched_equals_packed():
    layer = trained_layer()
    x = torch.randn(3, 4, 12)
    cu = torch.tensor([0, 4, 8, 12])
    assert torch.allclose(layer(x), layer(x.reshape(12, 12), cu_seqlens=cu).reshape(3, 4, 10), atol=1e-6)


def test_heads_learn_per_image_weights_and_frozen_parameters_stay():
    torch.manual_seed(0)
    layer = FDLinear.from_linear(torch.nn.Linear(12, 10), num_groups=5)
    layer.spectrum.requires_grad_(False)
    layer.bias.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in layer.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    images = [torch.randn(6, 12) + 2, torch.randn(6, 12) - 2]
    cu = torch.tensor([0, 6, 12])
    target = torch.randn(12, 10)
    for _ in range(5):
        loss = (layer(torch.cat(images), cu_seqlens=cu) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = [layer.dynamic_weight(layer.gains(img.mean(0, keepdim=True))[0][0]) for img in images]
    assert (w[0] - w[1]).abs().max() > 1e-4
    for name, value in frozen.items():
        assert torch.equal(value, dict(layer.named_parameters())[name]), name


def test_backward_matches_an_explicit_weight():
    layer = trained_layer(1)
    x = torch.randn(7, 12, requires_grad=True)
    y = layer(x)
    beta, a_in, a_out = layer.gains(x.mean(0, keepdim=True))
    w = a_out[0][:, None] * layer.dynamic_weight(beta[0]) * a_in[0][None, :]
    ref = x @ w.T + layer.bias
    assert torch.allclose(y, ref, atol=1e-5)
    grad, = torch.autograd.grad(y.sum(), x)
    ref_grad, = torch.autograd.grad(ref.sum(), x)
    assert torch.allclose(grad, ref_grad, atol=1e-5)


def test_state_dict_round_trip():
    layer = trained_layer(2)
    clone = FDLinear(12, 10, num_groups=5)
    clone.load_state_dict(layer.state_dict())
    x = torch.randn(4, 12)
    assert torch.equal(layer(x), clone(x))
    assert "group_index" not in layer.state_dict()  # derived from the shape, not stored


@pytest.mark.parametrize("in_f, out_f", [(40, 30), (41, 30)])  # an odd width: the spectrum's I // 2 + 1 columns
def test_parameter_count_from_shapes(in_f, out_f):
    layer = FDLinear.from_linear(torch.nn.Linear(in_f, out_f), num_groups=6, reduction=1 / 16, min_channels=16)
    added = sum(p.numel() for p in layer.parameters()) - (in_f * out_f + out_f)
    count = dve_head_parameters(in_f, out_f, 6, 1 / 16, 16)
    assert added == count and isinstance(count, int)


@pytest.mark.parametrize("out_f, in_f, k", [(6, 10, 5), (7, 9, 4), (12, 5, 6)])
def test_groups_follow_the_true_radial_frequency_on_non_square_weights(out_f, in_f, k):
    """Each coefficient (row frequency min(o, O - o) / O, column frequency i / I) sits in a ring no lower than any
    coefficient of strictly smaller radius sqrt(fo^2 + fi^2), and the K rings hold equal counts to within one.
    Radii computed here from the definition, not from numpy's fftfreq; a squared term dropped, rows and columns
    swapped or the row frequency's sign kept would break the order on these shapes."""
    groups = frequency_groups(out_f, in_f, k)
    fo = torch.tensor([min(o, out_f - o) / out_f for o in range(out_f)], dtype=torch.float64)[:, None]
    fi = (torch.arange(in_f // 2 + 1, dtype=torch.float64) / in_f)[None, :]
    radius = (fo**2 + fi**2).sqrt().flatten()
    g = groups.flatten()
    lower = radius[:, None] < radius[None, :] - 1e-12  # a strictly below b
    assert (g[:, None] <= g[None, :])[lower].all()
    counts = torch.bincount(g, minlength=k)
    assert counts.max() - counts.min() <= 1 and len(counts) == k


def test_the_exported_static_layer_is_the_original_linear_bias_included():
    """``export`` replaces each FDLinear with its static base linear: the converted layer's weight and bias, so a
    stock load computes what the linear it came from computed (a dropped or zeroed bias shifts every output)."""
    from skinflow.export import static_linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 10)
    with torch.no_grad():
        linear.bias.uniform_(0.5, 1.0)  # far from zero
    static = static_linear(FDLinear.from_linear(linear, num_groups=4))
    x = torch.randn(3, 12)
    assert torch.allclose(static(x), linear(x), atol=1e-5)
    assert torch.equal(static.bias, linear.bias.detach())


def test_a_linear_without_bias_stays_without_one_and_a_bad_packing_is_named():
    layer = FDLinear.from_linear(torch.nn.Linear(8, 6, bias=False), num_groups=4)
    assert layer.bias is None and "bias" not in dict(layer.named_parameters())
    with_bias = FDLinear.from_linear(torch.nn.Linear(8, 6), num_groups=4)
    with pytest.raises(ValueError, match="cu_seqlens ends at 5 but the packed input has 7 tokens"):
        with_bias(torch.randn(7, 8), cu_seqlens=torch.tensor([0, 2, 5]))


def test_equal_radii_are_grouped_in_coefficient_order_so_groups_do_not_depend_on_the_sort():
    """group_index is rebuilt at load (not saved), so it must not depend on how a sort orders ties: coefficients of
    equal radius (o and O - o, and many more on a square) go to groups in their row-major order."""
    from skinflow.models.fdlinear import frequency_groups

    out_f, in_f, k = 64, 64, 7
    radius = np.sqrt(np.abs(np.fft.fftfreq(out_f))[:, None] ** 2 + np.fft.rfftfreq(in_f)[None, :] ** 2).ravel()
    rank = sorted(range(radius.size), key=lambda j: (radius[j], j))  # ties by position
    expected = np.empty(radius.size, dtype=np.int64)
    for g, chunk in enumerate(np.array_split(np.array(rank), k)):
        expected[chunk] = g
    assert frequency_groups(out_f, in_f, k).ravel().tolist() == expected.tolist()


def move_heads(layer: FDLinear) -> None:
    """Every parameter but the spectrum moved by a standard normal draw: the heads away from their start, where
    every gain is 1 and neither the packing nor the heads' normalisation shows in the output."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name != "spectrum":
                p.add_(torch.randn_like(p))


def test_defaults_and_a_layer_without_bias_and_the_packing_it_was_given():
    """64 frequency groups by default (both constructors); a layer without bias runs; a packing set on the layer
    (``cu_seqlens``, as the DVE sets it for the vision tower's packed images) is used when none is passed."""
    assert FDLinear(32, 32).num_groups == 64 and FDLinear.from_linear(torch.nn.Linear(32, 32)).num_groups == 64
    torch.manual_seed(0)
    plain = torch.nn.Linear(8, 6, bias=False)
    layer = FDLinear.from_linear(plain, num_groups=4)
    x = torch.randn(5, 8)
    assert torch.allclose(layer(x), plain(x), atol=1e-5)  # gains start at 1
    move_heads(layer)  # packing now matters
    packing = torch.tensor([0, 2, 5])
    expected = layer(x, cu_seqlens=packing)
    assert not torch.allclose(expected, layer(x))
    layer.cu_seqlens = packing
    assert torch.equal(layer(x), expected)


def test_a_bfloat16_layer_keeps_bfloat16_activations():
    torch.manual_seed(0)
    layer = FDLinear.from_linear(torch.nn.Linear(16, 12), num_groups=4).to(torch.bfloat16)
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 12)
    packed = layer(x.reshape(10, 16), cu_seqlens=torch.tensor([0, 5, 10]))
    assert packed.dtype == torch.bfloat16
    assert torch.allclose(packed.float(), y.reshape(10, 12).float(), atol=0.05)


def test_a_float32_layer_answers_bfloat16_activations_in_bfloat16():
    """Float32 weights under bfloat16 activations (Lightning's bf16-mixed autocast, or a bf16 input to an fp32
    layer): the output stays bfloat16 and equals the float32 computation to bf16 precision. The float32 bias, if not
    cast to the activations' dtype, would promote the output to float32."""
    torch.manual_seed(0)
    layer = FDLinear.from_linear(torch.nn.Linear(16, 12), num_groups=4)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 5, 16).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), layer(x.float()), atol=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


def test_the_heads_normalise_with_rmsnorm_at_eps_1e_6_even_for_faint_images():
    """gains = 2 sigmoid(head(relu(RMSNorm(squeeze(descriptor))))) with RMSNorm's eps 1e-6: written out here and
    compared on descriptors faint enough (squeezed mean square about 1e-6) that another eps changes the gains."""
    torch.manual_seed(0)
    layer = FDLinear(32, 24, num_groups=4, min_channels=8)
    move_heads(layer)
    d = 1e-3 * torch.randn(3, 32) / 32 ** 0.5
    z = layer.squeeze(d)
    h = torch.relu(z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.norm.weight)
    expected = [2 * torch.sigmoid(head(h)) for head in (layer.to_groups, layer.to_in, layer.to_out)]
    for ours, theirs in zip(layer.gains(d), expected):
        assert torch.allclose(ours, theirs, atol=1e-5)
