"""Digits main job (``flowplug train``'s MRCNF preset on the embedded 8x8 digits): the preset before issue 11
against the candidates, on one torch thread, CPU seconds by ``time.process_time()``.

    PYTHONPATH=. python benchmarks/results/digits-main-job/digits_main_job.py NAME STEPS OUT.json

Figures in this folder: ``old`` 2000 steps, ``res_a3`` 1000 and 2000 steps, ``res_a3_st`` 1000 steps
(docs/benchmarks.md, "The default job"); ``res_a3_warp`` 1000 steps ("The edge-bin warp"; ``res_a3`` rerun
beside it on 2026-12-02 gave the same 2.3077).
"""

import json
import sys
import time

import torch

import flowplug
from flowplug.data import load_dataset
from flowplug.train.trainer import TrainConfig, Trainer

RES_NETS = [{"hidden_channels": 64, "num_blocks": 1}, {"hidden_channels": 64, "num_blocks": 2},
            {"hidden_channels": 64, "num_blocks": 2}]
CANDIDATES = {
    "old": {"levels": 3, "hidden_channels": 64},
    "res_a3": {"levels": 3, "net": "res_odenet", "net_options": RES_NETS, "logit_alpha": 1e-3},
    "res_a3_st": {"levels": 3, "net": "res_odenet", "net_options": RES_NETS, "logit_alpha": 1e-3,
                  "detail_stretch": 1 / 17},
    "res_a3_warp": {"levels": 3, "net": "res_odenet", "net_options": RES_NETS, "logit_alpha": 1e-3,
                    "bin_warp": {"n_bins": 17, "power": 1 / 3}},
}


def main() -> None:
    torch.set_num_threads(1)
    name, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    data = load_dataset("digits")
    train, val = data.split(0.1, seed=0)  # as flowplug train does
    torch.manual_seed(0)
    model = flowplug.build({"type": "mrcnf", "image_shape": list(data.image_shape), **CANDIDATES[name]})
    cfg = TrainConfig(objective="flow_matching", steps=steps, batch_size=128, lr=2e-3, progress=False,
                      tensorboard=False)
    trainer = Trainer(model, cfg)
    c0, w0 = time.process_time(), time.monotonic()
    trainer.fit(train)
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    c1 = time.process_time()
    ev = trainer.evaluate(val)
    res = {"name": name, "spec": model.config, "steps": trainer.step, "train_cpu_s": round(cpu, 1),
           "train_wall_s": round(wall, 1), "params": sum(p.numel() for p in model.parameters()),
           "held_out_images": len(val), "eval_cpu_s": round(time.process_time() - c1, 1), **ev}
    with open(out, "w") as file:
        json.dump(res, file, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
