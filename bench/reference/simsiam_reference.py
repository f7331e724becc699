#!/usr/bin/env python3
"""Plain-PyTorch SimSiam reference baseline on a Stanford Dogs subset.

The point of this script is to be the obvious, idiomatic PyTorch implementation of the same
recipe the Rust trainer runs, so that throughput (images/s) and kNN accuracy can be compared side
by side on the same machine. Augmentation deliberately runs in Python on the training thread
(DataLoader num_workers=0).

Output: one JSON line per epoch on stdout, then one summary line. Progress notes go to stderr.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import scipy.io
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STORE_SIZE = 80  # every image is decoded once and kept in memory at 80x80
CROP = 64


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj), flush=True)


# ----------------------------------------------------------------------------------------- data

def read_list(path):
    """(relative file names, labels 1..120) from an official-format Stanford Dogs list .mat."""
    m = scipy.io.loadmat(path)
    files = [str(np.asarray(c).ravel()[0]) for c in m["file_list"].ravel()]
    labels = np.asarray(m["labels"]).ravel().astype(np.int64)
    return files, labels


def load_split(root, split, breeds):
    files, labels = read_list(os.path.join(root, "lists", f"{split}_list.mat"))
    keep = [(f, int(l)) for f, l in zip(files, labels) if 1 <= l <= breeds]
    images, ys = [], []
    for rel, lab in keep:
        with Image.open(os.path.join(root, "Images", rel)) as im:
            im = im.convert("RGB").resize((STORE_SIZE, STORE_SIZE), Image.BILINEAR)
        images.append(im)
        ys.append(lab - 1)
    return images, torch.tensor(ys, dtype=torch.long)


class TwoViews(Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        im = self.images[i]
        return self.transform(im), self.transform(im)


class OneView(Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


def train_transform():
    return T.Compose([
        T.RandomResizedCrop(CROP, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform():
    return T.Compose([
        T.Resize((STORE_SIZE, STORE_SIZE)),
        T.CenterCrop(CROP),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


# ---------------------------------------------------------------------------------------- model

class SimSiam(nn.Module):
    def __init__(self, feat_dim=512, proj_dim=2048, pred_hidden=512):
        super().__init__()
        self.backbone = torchvision.models.resnet18(weights=None, zero_init_residual=True)
        self.backbone.fc = nn.Identity()  # standard ImageNet stem kept; 512-d features
        self.projector = nn.Sequential(
            nn.Linear(feat_dim, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim),
            nn.ReLU(inplace=True),
            nn.Linear(proj_dim, proj_dim, bias=False),
            nn.BatchNorm1d(proj_dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(proj_dim, pred_hidden, bias=False),
            nn.BatchNorm1d(pred_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(pred_hidden, proj_dim),
        )

    def forward(self, x1, x2):
        z1 = self.projector(self.backbone(x1))
        z2 = self.projector(self.backbone(x2))
        p1 = self.predictor(z1)
        p2 = self.predictor(z2)
        return p1, p2, z1, z2


def simsiam_loss(p1, p2, z1, z2):
    """Symmetric negative cosine similarity with stop-gradient on the targets."""
    return -(F.cosine_similarity(p1, z2.detach(), dim=1).mean()
             + F.cosine_similarity(p2, z1.detach(), dim=1).mean()) * 0.5


# ----------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def extract(backbone, images, batch_size=256):
    was_training = backbone.training
    backbone.eval()
    loader = DataLoader(OneView(images, eval_transform()), batch_size=batch_size,
                        shuffle=False, num_workers=0)
    feats = torch.cat([backbone(x) for x in loader])
    backbone.train(was_training)
    return F.normalize(feats, dim=1)


@torch.no_grad()
def knn_top1(train_f, train_y, test_f, test_y, k=20, t=0.1, num_classes=None):
    """Weighted kNN (InstDisc style): the k nearest train features by cosine vote with exp(cos/t)."""
    num_classes = num_classes or int(train_y.max()) + 1
    sim = test_f @ train_f.T                               # [n_test, n_train]
    k = min(k, train_f.shape[0])
    top_sim, top_idx = sim.topk(k, dim=1)
    weights = (top_sim / t).exp()
    votes = torch.zeros(test_f.shape[0], num_classes)
    votes.scatter_add_(1, train_y[top_idx], weights)
    pred = votes.argmax(dim=1)
    return (pred == test_y).float().mean().item()


def fit_logreg(x, y, num_classes, wd, max_iter=200):
    torch.manual_seed(0)
    lin = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + 0.5 * wd * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


@torch.no_grad()
def accuracy(lin, x, y):
    return (lin(x).argmax(dim=1) == y).float().mean().item()


def linear_probe(train_f, train_y, test_f, test_y, num_classes, seed=0,
                 wds=(0.0, 1e-5, 1e-4, 1e-3, 1e-2)):
    """Logistic regression on L2-normalised features; weight decay chosen on 10% of train."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(train_f.shape[0], generator=g)
    n_val = max(1, train_f.shape[0] // 10)
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    scores = {}
    with torch.enable_grad():
        for wd in wds:
            lin = fit_logreg(train_f[fit_idx], train_y[fit_idx], num_classes, wd)
            scores[wd] = accuracy(lin, train_f[val_idx], train_y[val_idx])
        best = max(wds, key=lambda w: (scores[w], w))  # ties -> stronger regularisation
        lin = fit_logreg(train_f, train_y, num_classes, best)
    return {"probe_top1": round(accuracy(lin, test_f, test_y), 5), "probe_wd": best,
            "probe_val": {str(w): round(s, 5) for w, s in scores.items()}}


def evaluate(backbone, data, args, probe=False):
    t0 = time.perf_counter()
    train_f = extract(backbone, data["train_images"])
    test_f = extract(backbone, data["test_images"])
    out = {"knn_top1": round(knn_top1(train_f, data["train_y"], test_f, data["test_y"],
                                      k=args.knn_k, t=args.knn_t, num_classes=args.breeds), 5)}
    if probe:
        out.update(linear_probe(train_f, data["train_y"], test_f, data["test_y"], args.breeds,
                                seed=args.seed))
    out["eval_s"] = round(time.perf_counter() - t0, 3)
    return out


# ------------------------------------------------------------------------------------------ main

def parse_args():
    here = os.path.dirname(os.path.abspath(__file__))
    default_data = os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "data",
                                                 "stanford-dogs"))
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("DOGS_DIR", default_data),
                   help="Stanford Dogs root (Images/, lists/); default ../shared/data/stanford-dogs")
    p.add_argument("--breeds", type=int, default=10, help="use labels 1..N (default 10)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--base-lr", type=float, default=0.2,
                   help="lr = base_lr * batch_size / 256 (default 0.2 -> 0.05 at batch 64)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knn-every", type=int, default=0,
                   help="also run kNN every N epochs (default 0: at the end only)")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--knn-t", type=float, default=0.1)
    p.add_argument("--linear-probe", action="store_true",
                   help="also fit an L-BFGS logistic-regression probe at the end")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate kNN on the untrained encoder and exit")
    return p.parse_args()


def main():
    args = parse_args()
    if args.epochs < 1 and not args.random_init:
        sys.exit("--epochs must be >= 1")
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    if not os.path.isdir(os.path.join(args.data, "Images")):
        sys.exit(f"Stanford Dogs not found at {args.data} (set --data or DOGS_DIR)")

    t0 = time.perf_counter()
    train_images, train_y = load_split(args.data, "train", args.breeds)
    test_images, test_y = load_split(args.data, "test", args.breeds)
    load_s = time.perf_counter() - t0
    data = {"train_images": train_images, "train_y": train_y,
            "test_images": test_images, "test_y": test_y}
    log(f"loaded {len(train_images)} train / {len(test_images)} test images "
        f"({args.breeds} breeds) in {load_s:.1f}s; torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, threads {torch.get_num_threads()}")

    model = SimSiam()
    common = {"breeds": args.breeds, "n_train": len(train_images), "n_test": len(test_images),
              "threads": args.threads, "seed": args.seed, "torch": torch.__version__,
              "torchvision": torchvision.__version__}

    if args.random_init:
        res = evaluate(model.backbone, data, args, probe=args.linear_probe)
        emit({"summary": True, "random_init": True, **res, **common})
        return

    lr = args.base_lr * args.batch_size / 256
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    g = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(TwoViews(train_images, train_transform()), batch_size=args.batch_size,
                        shuffle=True, drop_last=True, num_workers=0, generator=g)
    if len(loader) == 0:
        sys.exit(f"{len(train_images)} training images < batch size {args.batch_size}")

    train_s_total, images_total, last = 0.0, 0, {}
    for epoch in range(args.epochs):
        cur_lr = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
        for group in optimizer.param_groups:
            group["lr"] = cur_lr
        model.train()
        loss_sum, zstd_sum, steps, seen, data_s = 0.0, 0.0, 0, 0, 0.0
        t_epoch = time.perf_counter()
        t_data = t_epoch
        for x1, x2 in loader:
            data_s += time.perf_counter() - t_data
            p1, p2, z1, z2 = model(x1, x2)
            loss = simsiam_loss(p1, p2, z1, z2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                zstd = 0.5 * (F.normalize(z1, dim=1).std(dim=0).mean()
                              + F.normalize(z2, dim=1).std(dim=0).mean())
            loss_sum += loss.item()
            zstd_sum += zstd.item()
            steps += 1
            seen += x1.shape[0]
            t_data = time.perf_counter()
        epoch_s = time.perf_counter() - t_epoch
        train_s_total += epoch_s
        images_total += seen

        rec = {"epoch": epoch + 1, "loss": round(loss_sum / steps, 5),
               "z_std": round(zstd_sum / steps, 5), "img_per_s": round(seen / epoch_s, 2),
               "knn_top1": None, "lr": round(cur_lr, 6), "train_s": round(epoch_s, 3),
               "data_s": round(data_s, 3)}
        is_last = epoch + 1 == args.epochs
        if is_last or (args.knn_every > 0 and (epoch + 1) % args.knn_every == 0):
            res = evaluate(model.backbone, data, args, probe=is_last and args.linear_probe)
            rec["knn_top1"] = res.pop("knn_top1")
            rec["eval_s"] = res.pop("eval_s")
            last = res
        emit(rec)
        if is_last:
            final_knn = rec["knn_top1"]

    summary = {"summary": True, "epochs": args.epochs, "final_knn_top1": final_knn,
               "final_loss": rec["loss"], "final_z_std": rec["z_std"],
               "img_per_s_mean": round(images_total / train_s_total, 2),
               "train_s_total": round(train_s_total, 3), "load_s": round(load_s, 3),
               "batch_size": args.batch_size, "lr": lr, **last, **common}
    emit(summary)


if __name__ == "__main__":
    main()
