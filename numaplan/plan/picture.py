"""A plan drawn on its machine (what ``numaplan show --png`` writes).

:func:`render_plan_png` draws with matplotlib (Agg canvas, no display, no pyplot state): one box
per NUMA node grouped by socket, the workers inside, a bar of memory homed against capacity,
arrows for cross-node reads with their bytes per token, and a caption with the prediction.
matplotlib is imported only there (the ``plot`` extra).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import NamedTuple

from numaplan._io import atomic_file
from numaplan.errors import NumaplanError
from numaplan.plan.formatting import format_ids, format_seconds, format_tps, human_bytes
from numaplan.plan.schema import Plan, PlanNode
from numaplan.plan.views import cross_node_reads, reader_mem_nodes, threads_on_node

_BOX_W, _BOX_H = 4.6, 3.4  # a node box, in data units
_HGAP = 2.4                # between boxes of a row: room for two labelled arrows
_VGAP = 1.0                # at least, between rows of boxes
_PAD, _TITLE = 0.4, 0.6    # socket frame padding and title band
_SOCKET_GAP = 1.6          # between socket frames
_SOCKETS_PER_ROW = 4
_LANE = 0.42               # vertical spacing of arrows routed through one band
_INCH_PER_UNIT = 0.55
_CHIP = 0.5                # a worker chip
_MAX_CHIP_ROWS = 2


class _Slot(NamedTuple):
    srow: int  # row of sockets
    scol: int  # socket's column in that row
    grow: int  # box row inside the socket
    gcol: int  # box column inside the socket


class _Route(NamedTuple):
    src: int             # memory node
    dst: int             # reader node
    nbytes: int          # per token
    kind: str            # "h": neighbours in a row; "band": via a horizontal band; "arc"
    band: tuple | None   # ("top", srow) or ("gap", srow, row above the band)
    src_edge: str        # "top" / "bottom" for band routes
    dst_edge: str


def _grid(n: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(n)))
    return cols, max(1, math.ceil(n / cols))


def _slots(plan: Plan) -> tuple[dict[int, _Slot], int, int, list[int]]:
    """Grid position of every node: sockets in rows of four, nodes in a grid per socket."""
    by_socket: dict[int, list[int]] = {}
    for n in sorted(plan.nodes, key=lambda n: n.node_id):
        by_socket.setdefault(n.socket_id, []).append(n.node_id)
    sockets = sorted(by_socket)
    # The same grid for every socket, so boxes line up across sockets.
    cols, rows = _grid(max(len(v) for v in by_socket.values()))
    slots = {}
    for k, sid in enumerate(sockets):
        for i, nid in enumerate(by_socket[sid]):
            slots[nid] = _Slot(k // _SOCKETS_PER_ROW, k % _SOCKETS_PER_ROW, i // cols, i % cols)
    return slots, cols, rows, sockets


def _routes(reads: dict[tuple[int, int], int], slots: dict[int, _Slot]) -> list[_Route]:
    """How each cross-node read is drawn so that it does not cross other boxes."""
    rows: dict[tuple[int, int], list[int]] = {}
    for nid, sl in sorted(slots.items(), key=lambda kv: (kv[1].scol, kv[1].gcol, kv[0])):
        rows.setdefault((sl.srow, sl.grow), []).append(nid)
    out = []
    for (reader, home), nbytes in reads.items():
        if reader not in slots or home not in slots:
            continue
        a, b = slots[home], slots[reader]
        if (a.srow, a.grow) == (b.srow, b.grow):
            row = rows[(a.srow, a.grow)]
            if abs(row.index(home) - row.index(reader)) == 1:
                out.append(_Route(home, reader, nbytes, "h", None, "", ""))
            elif a.grow == 0:
                out.append(_Route(home, reader, nbytes, "band", ("top", a.srow), "top", "top"))
            else:
                out.append(_Route(home, reader, nbytes, "band", ("gap", a.srow, a.grow - 1),
                                  "top", "top"))
        elif a.srow == b.srow and abs(a.grow - b.grow) == 1:
            down = a.grow < b.grow
            out.append(_Route(home, reader, nbytes, "band", ("gap", a.srow, min(a.grow, b.grow)),
                              "bottom" if down else "top", "top" if down else "bottom"))
        else:
            out.append(_Route(home, reader, nbytes, "arc", None, "", ""))
    return out


def _layout(slots: dict[int, _Slot], cols: int, rows: int, lanes: dict[tuple, int]
            ) -> tuple[dict[int, tuple[float, float]], dict[tuple[int, int], tuple[float, ...]],
                       dict[tuple, float], float, float]:
    """Box corners, socket frames, the y of each band's first lane, and the drawing's size."""
    srows = sorted({s.srow for s in slots.values()})
    scols = max(s.scol for s in slots.values()) + 1
    sw = cols * _BOX_W + (cols - 1) * _HGAP + 2 * _PAD

    def top_band(sr: int) -> float:
        n = lanes.get(("top", sr), 0)
        return 0.35 + n * _LANE if n else 0.0

    def gap(sr: int, g: int) -> float:
        n = lanes.get(("gap", sr, g), 0)
        return max(_VGAP, 0.5 + n * _LANE)

    heights = {sr: _TITLE + top_band(sr) + rows * _BOX_H + sum(gap(sr, g) for g in range(rows - 1))
               + _PAD for sr in srows}
    height = sum(heights.values()) + (len(srows) - 1) * _SOCKET_GAP
    width = min(scols, _SOCKETS_PER_ROW) * sw + (min(scols, _SOCKETS_PER_ROW) - 1) * _SOCKET_GAP
    row_top: dict[tuple[int, int], float] = {}
    band_y: dict[tuple, float] = {}
    y = height
    frame_y: dict[int, tuple[float, float]] = {}
    for sr in srows:
        frame_y[sr] = (y - heights[sr], heights[sr])
        t = y - _TITLE - top_band(sr)
        band_y[("top", sr)] = t + 0.3
        for g in range(rows):
            row_top[(sr, g)] = t
            t -= _BOX_H
            if g < rows - 1:
                band_y[("gap", sr, g)] = t - 0.3
                t -= gap(sr, g)
        y -= heights[sr] + _SOCKET_GAP
    pos = {nid: (s.scol * (sw + _SOCKET_GAP) + _PAD + s.gcol * (_BOX_W + _HGAP),
                 row_top[(s.srow, s.grow)] - _BOX_H) for nid, s in slots.items()}
    frames = {(s.srow, s.scol): (s.scol * (sw + _SOCKET_GAP), frame_y[s.srow][0], sw,
                                 frame_y[s.srow][1]) for s in slots.values()}
    return pos, frames, band_y, width, height


def _edge_point(center: tuple[float, float], toward: tuple[float, float],
                margin: float = 0.12) -> tuple[float, float]:
    """Where the segment from a box's center toward a point leaves the box (plus a margin)."""
    cx, cy = center
    dx, dy = toward[0] - cx, toward[1] - cy
    if dx == dy == 0:
        return center
    hw, hh = _BOX_W / 2 + margin, _BOX_H / 2 + margin
    t = min(hw / abs(dx) if dx else math.inf, hh / abs(dy) if dy else math.inf)
    return cx + dx * t, cy + dy * t


def _source_name(source: str) -> str:
    """The topology source without its directory (``numactl:/x/y/epyc.txt`` ->
    ``numactl:epyc.txt``): the picture is shared, and where the file lay on the machine that drew
    it is noise there."""
    kind, sep, path = source.partition(":")
    if not sep or "/" in kind:
        kind, sep, path = "", "", source
    name = Path(path).name
    return f"{kind}{sep}{name}" if name else source


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def render_plan_png(plan: Plan, path: str | Path, *, dpi: int = 110) -> Path:
    """Draw the plan on its machine and write a PNG atomically.

    One box per NUMA node grouped by socket; inside, the node's workers (ids), its CPUs, a bar
    of the memory the plan homes there against the node's capacity, and the predicted read time.
    Red arrows go from a memory node to the node whose workers read from it across nodes,
    labelled with bytes per token (from the tensors' homes and the worker counts). The caption
    gives the predicted tokens/s against the lower bound and the baselines.

    Parameters
    ----------
    plan
        The plan.
    path
        The PNG to write (its directory is created); written to a temporary file in the same
        directory, then renamed.
    dpi
        Resolution.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    NumaplanError
        matplotlib is not installed (``pip install 'numaplan[plot]'``), or the file cannot be
        written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
        from matplotlib.path import Path as MplPath
    except ImportError:
        raise NumaplanError("drawing a plan needs matplotlib: pip install 'numaplan[plot]'"
                            ) from None

    slots, cols, rows, _ = _slots(plan)
    routes = _routes(cross_node_reads(plan), slots)
    lane_of: dict[int, int] = {}
    lanes: dict[tuple, int] = {}
    for i, rt in enumerate(routes):
        if rt.band is not None:
            lane_of[i] = lanes.get(rt.band, 0)
            lanes[rt.band] = lane_of[i] + 1
    pos, frames, band_y, width, height = _layout(slots, cols, rows, lanes)

    # Equal aspect (square chips, round arcs): the figure is at least 9 in wide, the drawing
    # centred in it; caption and title wrap to that width.
    fig_w = max(9.0, (width + 1.0) * _INCH_PER_UNIT)
    span = fig_w / _INCH_PER_UNIT
    left = width / 2 - span / 2
    caption = [part for i, line in enumerate(_caption(plan))
               for part in textwrap.wrap(line, int((fig_w - 0.6) * (11.5 if i else 10.5)),
                                         subsequent_indent="    ", break_on_hyphens=False)]
    m = plan.model
    title = textwrap.wrap(f"{m.name} ({m.quantization}), W={plan.request.tensor_parallel_shards}"
                          f", on {_source_name(plan.topology.source)}",
                          int((fig_w - 0.6) * 9))
    caption_h = 0.42 * len(caption) + 0.4
    title_h = 0.5 + 0.45 * len(title)
    fig = Figure(figsize=(fig_w, (height + caption_h + title_h + 0.6) * _INCH_PER_UNIT),
                 dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(left, left + span)
    ax.set_ylim(-caption_h - 0.3, height + title_h + 0.3)
    ax.set_axis_off()
    ax.text(width / 2, height + title_h / 2 + 0.1, "\n".join(title), ha="center", va="center",
            fontsize=12, fontweight="bold", linespacing=1.3)
    socket_ids = {(s.srow, s.scol): n.socket_id for n in plan.nodes
                  for s in [slots[n.node_id]]}
    for key, (sx, sy, sw, sh) in sorted(frames.items()):
        ax.add_patch(FancyBboxPatch((sx, sy), sw, sh, boxstyle="round,pad=0,rounding_size=0.3",
                                    facecolor="#f4f6fa", edgecolor="#8a94a6", linewidth=1.2,
                                    zorder=0))
        ax.text(sx + 0.3, sy + sh - _TITLE / 2, f"socket {socket_ids[key]}", ha="left",
                va="center", fontsize=10, color="#3c4658", fontweight="bold")

    colors = _worker_colors(len(plan.workers))
    for n in plan.nodes:
        _draw_node(ax, plan, n, pos[n.node_id], colors, Rectangle)

    # Anchor points on box edges: spread, ordered by the partner's position (fewer crossings).
    ends: dict[tuple[int, str], list[tuple[float, int, str]]] = {}
    for i, rt in enumerate(routes):
        if rt.kind == "band":
            ends.setdefault((rt.src, rt.src_edge), []).append((pos[rt.dst][0], i, "src"))
            ends.setdefault((rt.dst, rt.dst_edge), []).append((pos[rt.src][0], i, "dst"))
    anchor: dict[tuple[int, str], float] = {}
    for (nid, _edge), items in ends.items():
        for k, (_, i, side) in enumerate(sorted(items)):
            anchor[(i, side)] = pos[nid][0] + _BOX_W * (k + 1) / (len(items) + 1)

    top = max((rt.nbytes for rt in routes), default=1)
    label_style = {"ha": "center", "va": "center", "fontsize": 7.5, "color": "#7b241c",
                   "zorder": 7, "bbox": {"boxstyle": "round,pad=0.15", "facecolor": "white",
                                         "edgecolor": "#c0392b", "linewidth": 0.5}}
    for i, rt in enumerate(routes):
        lw = 1.0 + 3.0 * rt.nbytes / top
        style = {"arrowstyle": "-|>", "mutation_scale": 13, "linewidth": lw,
                 "color": "#c0392b", "alpha": 0.9, "zorder": 6}
        label = f"{human_bytes(rt.nbytes)}/token"
        (sx, sy), (dx, dy) = pos[rt.src], pos[rt.dst]
        if rt.kind == "h":
            rightward = sx < dx
            y = sy + _BOX_H / 2 + (0.55 if rightward else -0.55)
            x0 = sx + _BOX_W + 0.08 if rightward else sx - 0.08
            x1 = dx - 0.08 if rightward else dx + _BOX_W + 0.08
            ax.add_patch(FancyArrowPatch((x0, y), (x1, y), shrinkA=0, shrinkB=0, **style))
            ax.text((x0 + x1) / 2, y + 0.28, label, **label_style)
        elif rt.kind == "band":
            def edge_y(nid: int, edge: str) -> float:
                return pos[nid][1] + (_BOX_H + 0.05 if edge == "top" else -0.05)

            band = rt.band
            assert band is not None
            step = _LANE if band[0] == "top" else -_LANE
            ly = band_y[band] + step * lane_of[i]
            xa, xb = anchor[(i, "src")], anchor[(i, "dst")]
            verts = [(xa, edge_y(rt.src, rt.src_edge)), (xa, ly), (xb, ly),
                     (xb, edge_y(rt.dst, rt.dst_edge))]
            codes = [MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO]
            ax.add_patch(FancyArrowPatch(path=MplPath(verts, codes), **style))
            if abs(xb - xa) > 2.2:
                ax.text((xa + xb) / 2, ly, label, **label_style)
            else:
                ax.text(max(xa, xb) + 0.15, ly, label, **{**label_style, "ha": "left"})
        else:
            a = (sx + _BOX_W / 2, sy + _BOX_H / 2)
            b = (dx + _BOX_W / 2, dy + _BOX_H / 2)
            start, end = _edge_point(a, b), _edge_point(b, a)
            ax.add_patch(FancyArrowPatch(start, end, connectionstyle="arc3,rad=0.15", **style))
            mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
            vx, vy = end[0] - start[0], end[1] - start[1]
            ax.text(mx + 0.075 * vy, my - 0.075 * vx, label, **label_style)

    first = len(textwrap.wrap(_caption(plan)[0], int((fig_w - 0.6) * 10.5)))
    for i, line in enumerate(caption):
        ax.text(min(0.0, left + 0.6), -0.45 - 0.42 * i, line, ha="left", va="center",
                fontsize=10.5 if i < first else 9.5,
                fontweight="bold" if i < first else "normal", color="#1f2733")

    return _save(fig, Path(path), dpi)


def _worker_colors(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(max(n, 1))]


def _draw_node(ax, plan: Plan, n: PlanNode, xy: tuple[float, float], colors, rect) -> None:
    x, y = xy
    memory_only = not n.cpus
    ax.add_patch(rect((x, y), _BOX_W, _BOX_H, facecolor="#fff8e1" if memory_only else "white",
                      edgecolor="#34495e", linewidth=1.4, zorder=1))
    head = f"node {n.node_id}" + ("  (memory only)" if memory_only else "")
    ax.text(x + 0.15, y + _BOX_H - 0.3, head, ha="left", va="center", fontsize=10,
            fontweight="bold", zorder=2)
    if n.cpus:
        threads = threads_on_node(plan, n.node_id)
        ax.text(x + 0.15, y + _BOX_H - 0.68, _short(f"CPUs {n.cpus}", 34)
                + (f"  ({threads} threads)" if threads else ""),
                ha="left", va="center", fontsize=7.5, color="#4a5568", zorder=2)
    # Worker chips (or a text list when they do not fit).
    per_row = max(1, int((_BOX_W - 0.3) // (_CHIP + 0.1)))
    ids = list(n.worker_ids)
    top = y + _BOX_H - 1.0
    if ids and len(ids) <= per_row * _MAX_CHIP_ROWS:
        for k, wid in enumerate(ids):
            cx = x + 0.15 + (k % per_row) * (_CHIP + 0.1)
            cy = top - (k // per_row + 1) * (_CHIP + 0.1)
            ax.add_patch(rect((cx, cy), _CHIP, _CHIP, facecolor=colors[wid % len(colors)],
                              edgecolor="#2d3748", linewidth=0.8, zorder=2))
            ax.text(cx + _CHIP / 2, cy + _CHIP / 2, str(wid), ha="center", va="center",
                    fontsize=8, fontweight="bold", zorder=3)
    elif ids:
        ax.text(x + 0.15, top - 0.3, _short(f"workers {format_ids(ids)}", 34), ha="left",
                va="center", fontsize=9, zorder=2)
    elif not memory_only:
        ax.text(x + 0.15, top - 0.3, "no workers", ha="left", va="center", fontsize=8.5,
                color="#718096", style="italic", zorder=2)
    mem = reader_mem_nodes(plan)
    bound_here = sorted(r for r, j in mem.items() if j == n.node_id and r != n.node_id)
    if memory_only and bound_here:
        ax.text(x + 0.15, top - 0.3, f"memory of node {format_ids(bound_here)}", ha="left",
                va="center", fontsize=8.5, zorder=2)
    # Memory bar: homed against capacity.
    bar_x, bar_y, bar_w, bar_h = x + 0.15, y + 0.55, _BOX_W - 0.3, 0.32
    cap = n.mem_capacity_bytes
    ax.add_patch(rect((bar_x, bar_y), bar_w, bar_h, facecolor="#edf2f7", edgecolor="#718096",
                      linewidth=0.8, zorder=2))
    if cap:
        frac = n.bytes_homed / cap
        shown = min(1.0, max(frac, 0.012 if n.bytes_homed else 0.0))
        ax.add_patch(rect((bar_x, bar_y), bar_w * shown, bar_h,
                          facecolor="#c0392b" if frac > 1 else "#3182ce", linewidth=0,
                          zorder=3))
        label = f"homed {human_bytes(n.bytes_homed)} / {human_bytes(cap)} ({100 * frac:.1f}%)"
    else:
        label = f"homed {human_bytes(n.bytes_homed)} / capacity " + \
            ("unknown" if cap is None else "0")
    ax.text(bar_x, bar_y + bar_h + 0.2, label, ha="left", va="center", fontsize=7.5,
            zorder=3)
    if n.predicted_read_s is not None:
        ax.text(x + 0.15, y + 0.27, f"read {format_seconds(n.predicted_read_s)} per token",
                ha="left", va="center", fontsize=7.5, color="#4a5568", zorder=3)


def _caption(plan: Plan) -> list[str]:
    pr = plan.prediction
    nominal = " (nominal cost figures)" if pr.nominal else ""
    lines = [f"predicted {format_tps(pr.tokens_per_s)} tokens/s at batch {pr.batch_size}{nominal}: "
             f"{100 * pr.fraction_of_bound:.1f}% of the lower bound "
             f"{format_tps(pr.lower_bound_tokens_per_s)} tokens/s",
             f"per token: read {format_seconds(pr.read_s)} + collectives "
             f"{format_seconds(pr.collective_s)}; cross-node reads "
             f"{human_bytes(pr.cross_node_read_bytes_per_token)} of "
             f"{human_bytes(pr.bytes_read_per_token)}"]
    if pr.baselines:
        parts = []
        for name, b in pr.baselines.items():
            ratio = f"{pr.tokens_per_s / b.tokens_per_s:.2f}x" if b.tokens_per_s else "-"
            parts.append(f"{name} {format_tps(b.tokens_per_s)} (plan {ratio}"
                         + ("" if b.fits else ", does not fit") + ")")
        lines.append("baselines, tokens/s: " + ", ".join(parts))
    arrows = ("red arrows: cross-node reads per token" if cross_node_reads(plan)
              else "no cross-node reads: every worker reads its own memory node")
    lines.append(f"boxes: NUMA nodes (coloured squares: workers); bar: memory homed / capacity; "
                 f"{arrows}")
    return lines


def _save(fig, path: Path, dpi: int) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A picture is for people: the usual umask-derived mode of a new file.
        with atomic_file(path, mode=0o666) as f:
            # No "Software" version stamp: the same plan draws the same bytes on one install.
            fig.savefig(f, format="png", dpi=dpi, metadata={"Software": None})
    except OSError as exc:
        raise NumaplanError(f"cannot write the picture: {exc.strerror or exc}",
                            path=path) from None
    return path
