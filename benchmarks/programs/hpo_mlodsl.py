"""The seed's HPO program (per-parameter weight decay for a 784-200-10 MLP), for mlodsl.

Line-for-line twin of ``hpo_betty.py``: the two files differ only in the three library
imports. It is the seed tutorial's program with its slips fixed (``view(-1, 784)``,
``log_softmax(dim=1)``, consistent layer names ``fc1``/``fc2``, batch 64) and with the
benchmark plumbing (arguments, data, timing, result line) taken from ``benchmarks/_common.py``.

Two deliberate departures from the seed, both needed by Betty 0.2.1 and harmless to mlodsl:
no ``device=`` argument (Betty's problems do not take one; its Engine picks the device), and
``param_callback(self, params=None)`` (Betty calls it without arguments).

    python benchmarks/programs/hpo_mlodsl.py --method darts --unroll 1 --iters 30 --json
"""
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

import _common
from mlodsl.problems import ImplicitProblem
from mlodsl.configs import Config, EngineConfig
from mlodsl.engine import Engine

args = _common.program_args(__doc__.splitlines()[0])
_common.setup_process(args.threads, args.seed, args.device)
x_train, y_train, x_test, y_test = _common.load_data(args.data, args.seed)


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(784, 200, bias=False)
        self.fc2 = nn.Linear(200, 10, bias=False)

    def forward(self, x):
        x = x.view(-1, 784)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.fc2(x)
        out = F.log_softmax(x, dim=1)
        return out


class WeightDecay(nn.Module):
    def __init__(self):
        super(WeightDecay, self).__init__()
        self.fc1_wdecay = nn.Parameter(torch.ones(200, 784) * 5e-4)
        self.fc2_wdecay = nn.Parameter(torch.ones(10, 200) * 5e-4)

    def forward(self):
        return self.fc1_wdecay, self.fc2_wdecay


class Classifier(ImplicitProblem):
    def forward(self, x):
        return self.module(x)

    def training_step(self, batch):
        x, target = batch
        out = self.module(x)
        ce_loss = F.cross_entropy(out, target)
        fc1_wdecay, fc2_wdecay = self.hpo()
        reg_loss = torch.sum(torch.pow(self.module.fc1.weight, 2) * fc1_wdecay) / 2 + \
            torch.sum(torch.pow(self.module.fc2.weight, 2) * fc2_wdecay) / 2
        return ce_loss + reg_loss


class HPO(ImplicitProblem):
    def forward(self):
        return self.module()

    def training_step(self, batch):
        x, target = batch
        out = self.classifier(x)
        loss = F.cross_entropy(out, target)
        fc1_wdecay, fc2_wdecay = self()
        reg_loss = torch.sum(torch.pow(self.classifier.module.fc1.weight, 2) * fc1_wdecay) / 2 + \
            torch.sum(torch.pow(self.classifier.module.fc2.weight, 2) * fc2_wdecay) / 2
        acc = (out.argmax(dim=1) == target.long()).float().mean().item() * 100
        loss = loss + reg_loss
        return {"loss": loss, "acc": acc}

    def param_callback(self, params=None):
        # weight decay must stay positive
        for p in (params if params is not None else self.module.parameters()):
            p.data.clamp_(min=1e-8)


class HPOEngine(Engine):
    @torch.no_grad()
    def validation(self):
        return _common.evaluate(self.classifier.module, x_test, y_test)


classifier_module = Net()
classifier_optimizer = optim.SGD(classifier_module.parameters(), lr=0.01, momentum=0.9)
classifier_data_loader = _common.TimedLoader(x_train, y_train, batch_size=args.batch_size,
                                             seed=args.seed + 1)
hpo_module = WeightDecay()
hpo_optimizer = optim.Adam(hpo_module.parameters(), lr=1e-5)
hpo_data_loader = _common.TimedLoader(x_train, y_train, batch_size=args.batch_size,
                                      seed=args.seed + 2)


def make_engine():
    # Betty 0.2.1 reads type/unroll_steps from the lower's config, the seed from the upper's:
    # both get them.
    mlo = dict(type=args.method, unroll_steps=args.unroll, darts_alpha=0.01,
               neumann_iterations=args.hvp_iters, neumann_alpha=1.0,
               cg_iterations=args.hvp_iters, cg_alpha=1.0)
    classifier_config = Config(**mlo)
    classifier = Classifier(
        name="classifier",
        module=classifier_module,
        optimizer=classifier_optimizer,
        train_data_loader=classifier_data_loader,
        config=classifier_config,
    )
    hpo_config = Config(retain_graph=True, log_step=-1, **mlo)
    hpo = HPO(
        name="hpo",
        module=hpo_module,
        optimizer=hpo_optimizer,
        train_data_loader=hpo_data_loader,
        config=hpo_config,
    )

    problems = [hpo, classifier]
    u2l = {hpo: [classifier]}
    l2u = {classifier: [hpo]}
    dependencies = {"l2u": l2u, "u2l": u2l}
    engine_config = EngineConfig(train_iters=_common.total_engine_iters(args),
                                 valid_step=_common.total_engine_iters(args))
    return HPOEngine(config=engine_config, problems=problems, dependencies=dependencies)


sys.exit(_common.run_and_report(args, "hpo", make_engine, hpo_data_loader, classifier_module,
                                x_test, y_test))
