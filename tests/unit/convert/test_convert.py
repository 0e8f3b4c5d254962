"""fconv_plugin.convert's shared part: names follow the target model's layout, weight norm
and ConvTBC re-layout, dispatch by arch and the models' hook.  (Parity of converted models
with fairseq: test_parity.py, test_lm.py, test_self_att.py.)"""

import pytest
import torch

from fconv_plugin.convert import CONVERTERS, ConversionError, convert_checkpoint
from fconv_plugin.convert.common import WEIGHT_G, WEIGHT_V, TargetLayout, convert_weights
from fconv_plugin.models import native_checkpoint


def test_source_modules_find_the_targets_deeper_paths():
    layout = TargetLayout(
        {
            "decoder.stack.convolutions.0.bias": torch.zeros(1),
            "decoder.pretrained.stack.convolutions.0.bias": torch.zeros(1),
            "decoder.fc1.bias": torch.zeros(1),
            "encoder.a.x.bias": torch.zeros(1),
            "encoder.b.x.bias": torch.zeros(1),
        }
    )
    assert layout.module("decoder.fc1") == "decoder.fc1"  # the same path
    assert layout.module("decoder.convolutions.0") == "decoder.stack.convolutions.0"  # fewest names added
    assert layout.module("decoder.pretrained.convolutions.0") == "decoder.pretrained.stack.convolutions.0"
    assert layout.module("encoder.x") == "encoder.x"  # two equally close: kept, the weight check reports it
    assert layout.module("decoder.convolutions.1") == "decoder.convolutions.1"  # no such target


def test_weight_norm_and_conv_tbc_relayout():
    k, cin, cout = 3, 4, 5
    v_tbc, g_tbc = torch.randn(k, cin, cout), torch.rand(1, 1, cout) + 0.5
    plain_tbc = torch.randn(k, cin, cout)
    expected = {
        "decoder.stack.convolutions.0." + WEIGHT_G: torch.zeros(cout, 1, 1),
        "decoder.stack.convolutions.0." + WEIGHT_V: torch.zeros(cout, cin, k),
        "decoder.stack.convolutions.1." + WEIGHT_G: torch.zeros(cout, 1, 1),
        "decoder.stack.convolutions.1." + WEIGHT_V: torch.zeros(cout, cin, k),
        "decoder.version": torch.tensor([1.0]),
    }
    src = {
        "decoder.convolutions.0.weight_g": g_tbc,
        "decoder.convolutions.0.weight_v": v_tbc,
        "decoder.convolutions.1.weight": plain_tbc,  # fairseq without weight norm (fconv_self_att)
        "decoder.version": torch.tensor([2.0]),
    }
    out = convert_weights(src, expected)
    assert list(out) == list(expected)  # the target's names, in its order
    assert torch.equal(out["decoder.stack.convolutions.0." + WEIGHT_V], v_tbc.permute(2, 1, 0))
    assert torch.equal(out["decoder.stack.convolutions.0." + WEIGHT_G], g_tbc.reshape(cout, 1, 1))
    g, v = out["decoder.stack.convolutions.1." + WEIGHT_G], out["decoder.stack.convolutions.1." + WEIGHT_V]
    assert torch.allclose(g * v / torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True), plain_tbc.permute(2, 1, 0))
    assert out["decoder.version"].item() == 1.0  # the target's version, not fairseq's


def test_two_weights_for_one_target_name_are_refused():
    expected = {"decoder.stack.fc.bias": torch.zeros(2)}
    with pytest.raises(ConversionError, match="two weights"):
        convert_weights({"decoder.fc.bias": torch.ones(2), "decoder.stack.fc.bias": torch.ones(2)}, expected)


def test_dispatch_and_the_models_hook():
    assert {"fconv", "fconv_wmt_en_de", "fconv_lm", "fconv_self_att_wp"} <= set(CONVERTERS)
    with pytest.raises(ConversionError, match="neither 'cfg' nor 'args'"):
        convert_checkpoint({"model": {}})
    with pytest.raises(ConversionError, match="arch is 'fconv_ext'.*fconv_self_att to fconv_ext_self_att"):
        convert_checkpoint({"cfg": {"model": {"_name": "fconv_ext"}}, "model": {}})
    own = {"cfg": {"model": {"_name": "fconv_ext_self_att"}}, "model": {}}
    assert native_checkpoint(own) is own  # registered by importing fconv_plugin.convert; ours pass through
