"""ConvNet shapes, seeded construction and flat parameter vectors."""

import pytest
import torch

from dsim.errors import DsimError
from dsim.ml.models import (
    ConvNet,
    ModelConfig,
    build_model,
    embedding_dim,
    flat_params,
    load_flat_params,
    model_config,
    param_count,
)

torch.set_num_threads(1)


def test_mnist_convnet_has_2048_features_and_reference_param_count():
    net = build_model("convnet", 1, 10, 28, seed=0)
    x = torch.randn(3, 1, 28, 28)
    assert net.embed(x).shape == (3, 2048)
    assert net(x).shape == (3, 10)
    # conv 1->128 (1,280) + 3 norms (3 x 256) + 2 convs 128->128 (2 x 147,584) + linear 2048->10 (20,490)
    assert param_count(net) == 317_706
    assert net.features[0].padding == (3, 3)  # 28 is padded to 32 in the first conv
    norm = net.features[1]
    assert isinstance(norm, torch.nn.GroupNorm)
    assert norm.num_groups == norm.num_channels == 128 and norm.affine


def test_cifar_convnet_has_2048_features():
    net = build_model("convnet", 3, 10, 32, seed=0)
    assert net.features[0].padding == (1, 1)
    assert net.embed(torch.randn(2, 3, 32, 32)).shape == (2, 2048)


@pytest.mark.parametrize(
    ("size", "depth", "side"), [(4, 1, 2), (8, 2, 2), (16, 3, 2), (28, 3, 4), (32, 3, 4)]
)
def test_small_images_cap_the_depth_and_embedding_dim_is_predicted(size, depth, side):
    cfg = {"width": 8}
    net = build_model(cfg, 1, 10, size, seed=1)
    assert net.effective_depth == depth
    assert net.embed(torch.randn(2, 1, size, size)).shape == (2, 8 * side * side)
    assert embedding_dim(cfg, size) == net.embed_dim == 8 * side * side


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm", "layernorm", "groupnorm", "none"])
@pytest.mark.parametrize("pool", ["avgpool", "maxpool", "none"])
def test_norm_and_pool_choices_run(norm, pool):
    net = ConvNet(3, 5, 16, width=8, norm=norm, pool=pool)
    out = net(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert has_bn == (norm == "batchnorm")


def test_same_seed_same_network_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = build_model({"width": 16}, 1, 10, 16, seed=42)
    b = build_model({"width": 16}, 1, 10, 16, seed=42)
    c = build_model({"width": 16}, 1, 10, 16, seed=43)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(flat_params(a), flat_params(b))
    assert not torch.equal(flat_params(a), flat_params(c))


def test_flat_params_roundtrip_and_length_check():
    src = build_model({"width": 8}, 1, 10, 8, seed=1)
    dst = build_model({"width": 8}, 1, 10, 8, seed=2)
    vec = flat_params(src)
    assert vec.dim() == 1 and vec.numel() == param_count(src)
    load_flat_params(dst, vec)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(src(x), dst(x))
    vec.add_(1.0)  # flat_params returns a copy, not a view of the weights
    assert not torch.equal(flat_params(src), vec)
    with pytest.raises(ValueError):
        load_flat_params(dst, vec[:-1])


def test_model_config_names_and_overrides():
    assert model_config("ConvNet") == ModelConfig()
    assert model_config("convnet-bn").norm == "batchnorm"
    assert model_config({"name": "convnet_nn", "width": 32}) == ModelConfig(width=32, norm="none")
    with pytest.raises(DsimError):
        model_config("resnet")
    with pytest.raises(DsimError):
        model_config({"widht": 3})
    with pytest.raises(DsimError):
        model_config({"norm": "weird"})
