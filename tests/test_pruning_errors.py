"""Bad input: a clear error naming the option, before any training step."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_prune.pruning import AdaptivePruning
from tests.pruning_helpers import classifier, tiny_data, trainer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_sparsity": 1.0}, r"target_sparsity must be a number in \[0.0, 1.0\)"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"target_sparsity": "most"}, "target_sparsity"),
        ({"criterion": "l3norm"}, r"criterion must be one of \[.*'magnitude'.*\], got 'l3norm'"),
        ({"granularity": "blocks"}, r"granularity must be one of \['unstructured', 'structured'"),
        ({"nm": "4:2", "granularity": "n:m"}, "nm must satisfy 0 < N < M"),
        ({"nm": "two:four"}, "nm must look like 'N:M'"),
        ({"allocation": "erk"}, "allocation must be one of"),
        ({"schedule": "exp"}, "schedule must be one of"),
        ({"start": 0.8, "end": 0.5}, r"end \(0.5\) must be greater than start \(0.8\)"),
        ({"frequency": 0}, "frequency must be a positive integer"),
        ({"regrowth": "grow"}, "regrowth must be one of"),
        ({"mode": "up"}, "mode must be one of"),
        ({"patience": 0}, "patience must be a positive integer"),
        ({"min_density": 2}, "min_density"),
        ({"target_sparsity": 0.995, "max_sparsity": 0.99}, "must not exceed max_sparsity"),
        ({"target_sparsity": "auto", "monitor": None}, "target_sparsity='auto' needs a monitor"),
        ({"criterion": "activation", "criterion_kwargs": {"statistic": "max"}}, "statistic"),
        ({"criterion": "random", "criterion_kwargs": {"bogus": 1}}, "criterion_kwargs"),
        ({"include": 3}, "include must be a list of module-name globs"),
    ],
)
def test_bad_constructor_arguments_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptivePruning(**kwargs)


def test_nm_where_m_does_not_divide_the_input_dimension_raises_in_setup():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.flat = nn.Flatten()
            self.fc = nn.Linear(784, 30)
            self.out = nn.Linear(30, 10)

        def forward(self, x):
            return self.out(self.fc(self.flat(x)).relu())

    pruning = AdaptivePruning(granularity="n:m", nm="2:4", monitor=None)
    fit = trainer([pruning], max_epochs=1)
    with pytest.raises(ValueError, match=r"nm='2:4': M=4 does not divide .* 30 of net.out.weight"):
        fit.fit(classifier(Odd()), tiny_data())
    assert fit.global_step == 0


def test_structured_with_only_the_output_layer_raises():
    pruning = AdaptivePruning(granularity="structured", include=["net.5"], monitor=None)
    fit = trainer([pruning], max_epochs=1)
    with pytest.raises(ValueError, match="nothing would be pruned"):
        fit.fit(classifier(), tiny_data())
