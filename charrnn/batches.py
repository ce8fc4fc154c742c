"""The truncated-BPTT data layout: parallel streams walked in consecutive windows.

The training text is cut into `batch_size` contiguous streams, one per row. With the
text "abcdefghijklmnopqrstuvwx", batch_size=4 and seq_len=2 (targets are the inputs
shifted by one character, so each stream is (24 - 1) // 4 = 5 long):

        window 0   window 1   (window 2 would be short: dropped)
    ┌ a b ┐    ┌ c d ┐   e       stream 0: a..e, predicts b..f
    │ f g │    │ h i │   j       stream 1: f..j, predicts g..k
    │ k l │    │ m n │   o       stream 2: k..o, predicts l..p
    └ p q ┘    └ r s ┘   t       stream 3: p..t, predicts q..u

Row b of window w+1 continues row b of window w, so the hidden state left by one window
is the right starting state for the next: that is what lets the state carry across
windows while gradients stop at the boundary.

Several processes share the work by taking disjoint rows of one global layout of
`batch_size * num_shards` streams; each process still sees contiguous text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Streams:
    inputs: torch.Tensor  # (B, L) ids, compact dtype
    targets: torch.Tensor  # (B, L) the next character of each input
    seq_len: int

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def windows_per_epoch(self) -> int:
        return self.inputs.shape[1] // self.seq_len

    def window(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `index`-th window as int64 (x, y), each (B, seq_len)."""
        start = index * self.seq_len
        end = start + self.seq_len
        return self.inputs[:, start:end].long(), self.targets[:, start:end].long()


def make_streams(
    ids: torch.Tensor,
    batch_size: int,
    seq_len: int,
    shard: int = 0,
    num_shards: int = 1,
) -> Streams:
    """Lay `ids` out as `batch_size` streams (this shard's rows of the global layout)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    total_streams = batch_size * num_shards
    stream_len = (len(ids) - 1) // total_streams
    if stream_len < seq_len:
        raise ValueError(
            f"{len(ids)} ids are too few for {total_streams} streams of at least {seq_len}"
        )
    used = total_streams * stream_len
    inputs = ids[:used].view(total_streams, stream_len)  # (B_total, L)
    targets = ids[1 : used + 1].view(total_streams, stream_len)  # (B_total, L)
    rows = slice(shard * batch_size, (shard + 1) * batch_size)
    return Streams(inputs[rows], targets[rows], seq_len)


def shard_span(ids: torch.Tensor, batch_size: int, shard: int, num_shards: int) -> torch.Tensor:
    """The contiguous part of `ids` that shard `shard` of `num_shards` reads (a view):
    `make_streams(span, batch_size, seq_len)` gives exactly that shard's rows of
    `make_streams(ids, batch_size, seq_len, shard, num_shards)`, so a process can copy
    only its part of a large corpus to its GPU."""
    stream_len = (len(ids) - 1) // (batch_size * num_shards)
    start = shard * batch_size * stream_len
    return ids[start : start + batch_size * stream_len + 1]


def min_train_chars(batch_size: int, seq_len: int) -> int:
    """The shortest training text that yields one full window."""
    return batch_size * seq_len + 1
