"""Data reweighting (Meta-Weight-Net style) for a 784-200-10 MLP, for Betty 0.2.1.

Line-for-line twin of ``reweight_mlodsl.py``: the two files differ only in the three library
imports. The lower problem trains the classifier on noisily labelled data (40% of the labels
replaced at random), weighting each sample's loss by an upper MLP (1-100-1, sigmoid) applied
to that loss; the upper problem trains the weighting MLP so that the classifier does well on
a small clean "meta" set (Shu et al., 2019).

    python benchmarks/programs/reweight_betty.py --method darts --unroll 1 --iters 30 --json
"""
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

import _common
from betty.problems import ImplicitProblem
from betty.configs import Config, EngineConfig
from betty.engine import Engine

args = _common.program_args(__doc__.splitlines()[0])
_common.setup_process(args.threads, args.seed, args.device)
x_train, y_train, x_test, y_test = _common.load_data(args.data, args.seed)
n_meta = len(y_train) // 10  # a small clean meta set; the rest gets noisy labels
x_meta, y_meta = x_train[:n_meta], y_train[:n_meta]
x_noisy, y_noisy = x_train[n_meta:], _common.noisy_labels(y_train[n_meta:], 0.4, args.seed)


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


class WeightNet(nn.Module):
    def __init__(self):
        super(WeightNet, self).__init__()
        self.fc1 = nn.Linear(1, 100)
        self.fc2 = nn.Linear(100, 1)

    def forward(self, loss):
        return torch.sigmoid(self.fc2(F.relu(self.fc1(loss))))


class Classifier(ImplicitProblem):
    def forward(self, x):
        return self.module(x)

    def training_step(self, batch):
        x, target = batch
        out = self.module(x)
        loss = F.cross_entropy(out, target, reduction="none")
        weight = self.reweight(loss.detach().unsqueeze(1))
        return torch.mean(weight.squeeze(1) * loss)


class Reweight(ImplicitProblem):
    def forward(self, loss):
        return self.module(loss)

    def training_step(self, batch):
        x, target = batch
        out = self.classifier(x)
        return F.cross_entropy(out, target)


class ReweightEngine(Engine):
    @torch.no_grad()
    def validation(self):
        return _common.evaluate(self.classifier.module, x_test, y_test)


classifier_module = Net()
classifier_optimizer = optim.SGD(classifier_module.parameters(), lr=0.01, momentum=0.9)
classifier_data_loader = _common.TimedLoader(x_noisy, y_noisy, batch_size=args.batch_size,
                                             seed=args.seed + 1)
reweight_module = WeightNet()
reweight_optimizer = optim.Adam(reweight_module.parameters(), lr=1e-3)
reweight_data_loader = _common.TimedLoader(x_meta, y_meta, batch_size=args.batch_size,
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
    reweight_config = Config(retain_graph=True, log_step=-1, **mlo)
    reweight = Reweight(
        name="reweight",
        module=reweight_module,
        optimizer=reweight_optimizer,
        train_data_loader=reweight_data_loader,
        config=reweight_config,
    )

    problems = [reweight, classifier]
    u2l = {reweight: [classifier]}
    l2u = {classifier: [reweight]}
    dependencies = {"l2u": l2u, "u2l": u2l}
    engine_config = EngineConfig(train_iters=_common.total_engine_iters(args),
                                 valid_step=_common.total_engine_iters(args))
    return ReweightEngine(config=engine_config, problems=problems, dependencies=dependencies)


sys.exit(_common.run_and_report(args, "reweight", make_engine, reweight_data_loader,
                                classifier_module, x_test, y_test))
