"""Per-task fine-tuning on augmented support images (P>M>F; metaft.study.augment): against a
hand-written torch.optim loop that augments the support set afresh at every step (float64), on
both paths, and refused where it cannot apply."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from metaft.core.inner_loop import content_generator
from metaft.core.objective import Objective
from metaft.data.episode import Episode
from metaft.models.nets import MLP
from metaft.study.augment import AUGMENTATIONS, support_augment
from metaft.study.problems import finetune_problems
from tests.study.test_batched import _episode, _net, _support_stats_copy


@pytest.mark.parametrize("name", ["affine", "crop_flip"])
@pytest.mark.parametrize("vectorize", ["false", "true"])
def test_each_step_sees_a_fresh_augmentation_of_the_support_set(name, vectorize):
    net, ep = _net(6), _episode(problems=2, ways=3, shots=2, seed=6)
    aug = support_augment(name)
    curves = finetune_problems(net, ep, steps=3, lr=0.2, eval_every=2, head_init="zero", vectorize=vectorize,
                               augment=aug)
    for i in range(ep.num_tasks):
        sx, sy, qx = ep.support_x[i], ep.support_y[i], ep.query_x[i]
        g = content_generator(sx)  # the problem's own augmentations, whatever the batch
        m = copy.deepcopy(net).train()
        with torch.no_grad():
            m.head.weight.zero_(), m.head.bias.zero_()
        opt = torch.optim.SGD(m.parameters(), lr=0.2)
        seen = []
        for _ in range(3):
            xa = AUGMENTATIONS[name](sx, g)
            seen.append(xa)
            opt.zero_grad()
            F.cross_entropy(m(xa), sy).backward()
            opt.step()
        assert not torch.allclose(seen[0], sx) and not torch.allclose(seen[0], seen[1])  # augmented, afresh
        with torch.no_grad():  # the queries normalised with the real support images' statistics
            torch.testing.assert_close(curves.logits[i], _support_stats_copy(m, sx)(qx), rtol=1e-9, atol=1e-9)
    plain = finetune_problems(net, ep, steps=3, lr=0.2, head_init="zero", vectorize=vectorize)
    assert not torch.allclose(plain.logits, curves.logits)  # the option does something (the test can fail)


def test_augmentation_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="adapt.finetune.augment must be null or one of affine, crop_flip"):
        support_augment("mixup")
    torch.manual_seed(0)
    flat = Episode(torch.randn(2, 4, 1), torch.randn(2, 4, 1), torch.randn(2, 6, 1), torch.randn(2, 6, 1))
    with pytest.raises(ValueError, match="adapt.finetune.augment needs image problems"):
        finetune_problems(MLP(), flat, steps=1, lr=0.1, head_init="keep", objective=Objective("regression"),
                          augment=support_augment("affine"))
