"""The seed's HPO program as a compiled ``.mlo`` program: the third side of ``vs_betty.py``.

Same model, data, seeds, optimizers, method settings and timing as ``hpo_betty.py`` and
``hpo_mlodsl.py``; the difference is that the losses are written in the language, so the
compiler sees them as fx graphs instead of opaque ``training_step`` methods. That lets the
runtime differentiate *slices* of a loss (``mlodsl.compiler.back.slicing``): ``darts`` needs the
classifier's loss only for its gradient in the weight decays, and the cross-entropy term of
that loss (the whole network's forward pass) reads no weight decay, so it is left out.

The modules, optimizers' hyperparameters and data loaders are built here, in the same order as
in the twins (same initial weights, same batches), and handed to the program by name
(``mlodsl.compile(..., namespace=...)``).

    python benchmarks/programs/hpo_mlo.py --method darts --unroll 1 --iters 30 --json
    python benchmarks/programs/hpo_mlo.py --compile ...   # engine { compile = True }
"""
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

import torch
import torch.nn as nn
import torch.nn.functional as F

import _common
import mlodsl

# --compile (this program's own flag): `compile = True` in the engine block, i.e. whole MLO
# iterations captured and compiled into one graph each (mlodsl/runtime/compiled/)
COMPILE = "--compile" in sys.argv
if COMPILE:
    sys.argv.remove("--compile")
args = _common.program_args(__doc__.splitlines()[0])
_common.setup_process(args.threads, args.seed)
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


def reg_loss(net, decay):
    """The twins' regulariser: ``sum(w^2 * decay) / 2`` over both layers."""
    fc1_wdecay, fc2_wdecay = decay
    return torch.sum(torch.pow(net.fc1.weight, 2) * fc1_wdecay) / 2 + \
        torch.sum(torch.pow(net.fc2.weight, 2) * fc2_wdecay) / 2


def clamp_decay(params):
    """The twins' ``param_callback``: weight decay must stay positive."""
    for p in params:
        p.data.clamp_(min=1e-8)


classifier_module = Net()
classifier_data_loader = _common.TimedLoader(x_train, y_train, batch_size=args.batch_size,
                                             seed=args.seed + 1)
hpo_module = WeightDecay()
hpo_data_loader = _common.TimedLoader(x_train, y_train, batch_size=args.batch_size,
                                      seed=args.seed + 2)

METHOD_ARGS = {"darts": "alpha=0.01", "neumann": f"iterations={args.hvp_iters}, alpha=1.0",
               "cg": f"iterations={args.hvp_iters}, alpha=1.0"}

PROGRAM = f"""
import torch.nn.functional as F

problem classifier {{
    module     = net
    optimizer  = SGD(lr=0.01, momentum=0.9)
    data       = classifier_data
    loss(x, y) = F.cross_entropy(classifier(x), y) + reg_loss(classifier, hpo())
}}

problem hpo depends classifier every {args.unroll} via {args.method}({METHOD_ARGS[args.method]}) {{
    module     = weight_decay
    optimizer  = Adam(lr=1e-5)
    data       = hpo_data
    loss(x, y) = F.cross_entropy(classifier(x), y) + reg_loss(classifier, hpo())
    after_step = clamp_decay
}}

engine {{
    iterations = {_common.total_engine_iters(args)}
    seed       = {args.seed}
    compile    = {COMPILE}
}}
"""


def make_engine():
    plan = mlodsl.compile(PROGRAM, namespace={
        "net": classifier_module, "weight_decay": hpo_module, "reg_loss": reg_loss,
        "clamp_decay": clamp_decay, "classifier_data": classifier_data_loader,
        "hpo_data": hpo_data_loader})
    return plan.build_engine(console=False)


sys.exit(_common.run_and_report(args, "hpo", make_engine, hpo_data_loader, classifier_module,
                                x_test, y_test,
                                extra={"side": "mlodsl-mlo", "compile": COMPILE}))
