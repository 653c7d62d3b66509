"""common/hlo_launches.py counts the kernels of one step of the cached sampler's pixel loop."""

import jax
import jax.numpy as jnp
import pytest

from common import hlo_launches
from pixelsr import sampling
from tests.helpers import SAMPLER_TINY as TINY
from tests.helpers import make_sampler_model as make_model

# A row scan over a pixel scan of 4 trips each; the pixel step holds 2 fusions, a cuBLAS call, a copy and a loop of
# 3 trips around one more fusion: 5 fusions, 1 library call, 1 other per pixel.
HLO = """HloModule sampler

%fused_exp (p.0: f32[2]) -> f32[2] {
  %p.0 = f32[2]{0} parameter(0)
  ROOT %e = f32[2]{0} exponential(%p.0)
}

%noise_body (t.0: (s32[], f32[2])) -> (s32[], f32[2]) {
  %t.0 = (s32[], f32[2]{0}) parameter(0)
  %i.0 = s32[] get-tuple-element(%t.0), index=0
  %x.0 = f32[2]{0} get-tuple-element(%t.0), index=1
  %f.0 = f32[2]{0} fusion(%x.0), kind=kLoop, calls=%fused_exp
  ROOT %r.0 = (s32[], f32[2]{0}) tuple(%i.0, %f.0)
}

%pixel_body (t.1: (s32[], f32[2])) -> (s32[], f32[2]) {
  %t.1 = (s32[], f32[2]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%t.1), index=0
  %x.1 = f32[2]{0} get-tuple-element(%t.1), index=1
  %c.1 = f32[] constant(1)
  %f.1 = f32[2]{0} fusion(%x.1), kind=kLoop, calls=%fused_exp
  %g.1 = f32[2]{0} custom-call(%f.1), custom_call_target="__cublas$gemm"
  %h.1 = f32[2]{0} copy(%g.1)
  %w.1 = f32[2] while(%t.1), condition=%cond, body=%noise_body, backend_config={"known_trip_count":{"n":"3"}}
  %y.1 = f32[2]{0} get-tuple-element(%w.1), index=1
  %k.1 = f32[2]{0} fusion(%h.1, %y.1), kind=kLoop, calls=%fused_exp
  ROOT %r.1 = (s32[], f32[2]{0}) tuple(%i.1, %k.1)
}

%row_body (t.2: (s32[], f32[2])) -> (s32[], f32[2]) {
  %t.2 = (s32[], f32[2]{0}) parameter(0)
  %f.2 = f32[2]{0} fusion(%t.2), kind=kLoop, calls=%fused_exp
  ROOT %w.2 = f32[2] while(%t.2), condition=%cond, body=%pixel_body, backend_config={"known_trip_count":{"n":"4"}}
}

ENTRY %main (a: (s32[], f32[2])) -> (s32[], f32[2]) {
  %a = (s32[], f32[2]{0}) parameter(0)
  ROOT %w.3 = f32[2] while(%a), condition=%cond, body=%row_body, backend_config={"known_trip_count":{"n":"4"}}
}
"""


def test_counts_one_pixel_step_with_its_inner_loops():
  assert hlo_launches.pixel_step(HLO, 4) == {'fusion': 5, 'library call': 1, 'other': 1}


def test_refuses_a_program_without_that_loop():
  with pytest.raises(ValueError, match='one innermost loop of 5 trips, found 0'):
    hlo_launches.pixel_step(HLO, 5)


def test_finds_the_pixel_loop_of_the_compiled_sampler():
  model, variables, lowres = make_model()  # 8 x 12 outputs
  compiled = sampling._sample_cached.lower(
    model, variables, lowres, jax.random.key(0), jnp.float32(1.0), greedy=False, num_samples=1
  ).compile()
  launches = hlo_launches.pixel_step(compiled.as_text(), 12)
  # At least one kernel per gated layer of the horizontal stack and per colour's head.
  assert sum(launches.values()) >= TINY['prior_layers'] + 3
  # The row step (8 rows) holds the pixel loop: 12 pixel steps and more.
  assert sum(hlo_launches.pixel_step(compiled.as_text(), 8).values()) > 12 * sum(launches.values())
