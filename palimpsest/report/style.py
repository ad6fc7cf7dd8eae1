"""The one publication style of every palimpsest figure: the `palimpsest` plotly template and `style_figure`.

Analysers build plain plotly figures (they never import report/); the report, the exports, `palimpsest figures`
and `palimpsest.report.figure` pass each through `style_figure`, which sets the template and gives every trace
the colour, dash and marker of its role (pre, post, floor, ...) so the same model looks the same everywhere.
"""

from __future__ import annotations

import math
import re

import plotly.graph_objects as go
import plotly.io as pio

# Okabe & Ito (2008), the colour-blind-safe qualitative palette
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}
PALETTE = [OKABE_ITO[c] for c in ("blue", "vermillion", "green", "orange", "sky_blue", "purple", "black", "yellow")]
GREY = "#7f7f7f"
KEPT_COLOURS = {c.upper() for c in PALETTE} | {GREY.upper(), "#BBBBBB", "BLACK", "GREY", "GRAY"}

# Lines are drawn widest first, so a narrower dashed line on top of a coinciding wider one leaves both visible.
ROLES: dict[str, dict] = {
    "pre": {"color": OKABE_ITO["blue"], "dash": "solid", "symbol": "circle-open", "width": 5.0, "size": 12},
    "post": {"color": OKABE_ITO["vermillion"], "dash": "dash", "symbol": "square", "width": 2.5, "size": 7},
    "floor": {"color": OKABE_ITO["black"], "dash": "dot", "symbol": "diamond", "width": 2.0, "size": 7},
    "oracle": {"color": OKABE_ITO["purple"], "dash": "dashdot", "symbol": "star", "width": 2.0, "size": 8},
    "transfer": {"color": OKABE_ITO["green"], "dash": "dashdot", "symbol": "triangle-up-open", "width": 1.6,
                 "size": 10},
    "shuffled": {"color": OKABE_ITO["orange"], "dash": "longdash", "symbol": "x-thin-open", "width": 1.4, "size": 8},
}
ROLE_COLOURS = {role: style["color"] for role, style in ROLES.items()}
# item sets: the dash and marker tell them apart when one figure has several sets per model (colour: the model)
SET_SYMBOLS = {"forget": "circle", "retain": "square", "paraphrases": "diamond", "paraphrase": "diamond",
               "neighbours": "triangle-up", "neighbour": "triangle-up", "holdout": "cross"}
SET_DASHES = {"forget": "solid", "retain": "dot", "paraphrases": "dash", "paraphrase": "dash",
              "neighbours": "dashdot", "neighbour": "dashdot", "holdout": "longdash"}
# the two thresholds of the verdict, the same colours wherever they are drawn
THRESHOLD_STYLE = {"suppressed_min_residue": {"color": OKABE_ITO["vermillion"], "dash": "dash"},
                   "deleted_max_residue": {"color": OKABE_ITO["green"], "dash": "dot"}}
# residue 0 (floor) to 1 (pre): bluish green through pale yellow to vermillion (colour-blind safe)
RESIDUE_SCALE = [[0.0, "#009E73"], [0.5, "#F7F3C4"], [1.0, "#D55E00"]]
SEQUENTIAL_SCALE = [[0.0, "#F7FBFF"], [1.0, "#0072B2"]]

# bare axis titles of the analysers' figures and the same titles with what the number is
AXIS_UNITS = {"layer": "layer (block index)", "accuracy": "accuracy (fraction of items)",
              "probability": "P(correct answer)", "CKA": "linear CKA with pre (0–1)",
              "score": "score (0–1)", "top-1 rate": "top-1 rate (fraction of items)", "alpha": "alpha (steering scale)"}

# for a second (third, ...) trace of the same role and set: what no role or set uses
_DASHES = ("solid", "longdashdot", "dashdot", "longdash")
_SYMBOLS = ("circle", "x", "star", "hexagram")
TEMPLATE_NAME = "palimpsest"
_ROLE_WORD = re.compile(r"\b(" + "|".join(ROLES) + r")\b", re.IGNORECASE)
_SET_WORD = re.compile(r"\b(" + "|".join(SET_SYMBOLS) + r")\b", re.IGNORECASE)


def _axis() -> dict:
    return {"showline": True, "linecolor": "#333", "linewidth": 1, "mirror": True, "ticks": "outside",
            "ticklen": 4, "showgrid": True, "gridcolor": "#e6e6e6", "zeroline": False, "automargin": True,
            "title": {"standoff": 8}}


def template() -> go.layout.Template:
    return go.layout.Template(
        layout={"font": {"family": "Arial, Helvetica, sans-serif", "size": 13, "color": "#222"},
                "title": {"font": {"size": 15}, "x": 0.01, "xanchor": "left"},
                "colorway": PALETTE, "paper_bgcolor": "white", "plot_bgcolor": "white",
                "xaxis": _axis(), "yaxis": _axis(),
                "legend": {"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0.0, "xanchor": "left",
                           "bgcolor": "rgba(255,255,255,0)", "font": {"size": 12}},
                "colorscale": {"sequential": SEQUENTIAL_SCALE, "diverging": RESIDUE_SCALE},
                "margin": {"l": 70, "r": 20, "t": 60, "b": 70}, "hovermode": "closest"},
        data={"bar": [go.Bar(error_y={"color": "#333", "thickness": 1.2, "width": 4})],
              "scatter": [go.Scatter(error_y={"color": "#333", "thickness": 1.2, "width": 3})]})


pio.templates[TEMPLATE_NAME] = template()
pio.templates.default = TEMPLATE_NAME


def role_of(name: object) -> str | None:
    """The model a trace shows, from its name: 'post, forget items' -> post; None when it names none."""
    match = _ROLE_WORD.search(str(name or ""))
    return match.group(1).lower() if match else None


def set_of(name: object) -> str | None:
    match = _SET_WORD.search(str(name or ""))
    return match.group(1).lower() if match else None


def rgba(colour: str, alpha: float) -> str:
    colour = colour.lstrip("#")
    r, g, b = (int(colour[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _is_band(trace) -> bool:
    return trace.type == "scatter" and trace.fill not in (None, "none")


def _style_trace(trace, role: str | None, several_sets: bool, fallback: str, repeat: int = 0) -> None:
    """`repeat`: how many traces of the same role and set came before (they get other dashes and markers)."""
    style = ROLES.get(role) if role else None
    colour = style["color"] if style else fallback
    if _is_band(trace):
        trace.update(fillcolor=rgba(colour, 0.18), line={"width": 0}, hoverinfo="skip")
        return
    if trace.type == "scatter":
        symbol = style["symbol"] if style else "circle"
        dash = style["dash"] if style else (trace.line.dash or "solid")
        if several_sets and set_of(trace.name):
            symbol = SET_SYMBOLS[set_of(trace.name)] + ("-open" if role == "pre" else "")
            dash = SET_DASHES[set_of(trace.name)]
        mode = trace.mode or "lines+markers"
        if style and "markers" not in mode and "lines" in mode:
            mode += "+markers"
        if repeat:
            dash, symbol = _DASHES[repeat % len(_DASHES)], _SYMBOLS[repeat % len(_SYMBOLS)]
        trace.update(mode=mode, line={"color": colour, "dash": dash,
                                      "width": style["width"] if style else 2.0},
                     marker={"color": colour, "symbol": symbol, "size": style["size"] if style else 7,
                             "line": {"color": colour, "width": 1.5}})
    elif trace.type in ("bar", "box", "violin"):
        trace.update(marker={"color": colour, "line": {"width": 0}})


def _colour(trace):
    marker = getattr(trace, "marker", None)
    colour = getattr(marker, "color", None) if marker is not None else None
    if colour is None and getattr(trace, "line", None) is not None:
        colour = trace.line.color
    return colour


def _per_point_colours(trace) -> bool:
    """A colour per bar or point (e.g. by status) was chosen for what it encodes: kept."""
    return _colour(trace) is not None and not isinstance(_colour(trace), str)


def _keep_colour(trace) -> bool:
    """A trace without a role that already has a palette colour (or grey, black) chose it: kept as it is."""
    colour = _colour(trace)
    return isinstance(colour, str) and colour.upper() in KEPT_COLOURS


def _drop_repeated_bands(fig: go.Figure) -> None:
    """Coinciding curves (pre, post and transfer on a suppression) have the same band: one is drawn, not a stack
    of translucent ones that mixes their colours."""
    seen, kept = set(), []
    for trace in fig.data:
        if _is_band(trace):
            key = (tuple(trace.x or ()), tuple(round(float(v), 9) for v in (trace.y or ())))
            if key in seen:
                continue
            seen.add(key)
        kept.append(trace)
    if len(kept) < len(fig.data):
        fig.data = tuple(kept)


def _integer_layer_axes(fig: go.Figure) -> None:
    """Layer axes show whole layers: the layers plotted when few, else every k-th layer, never 0.5."""
    for key in [k for k in fig.layout.to_plotly_json() if k.startswith("xaxis")]:
        axis = fig.layout[key]
        title = (axis.title.text or "") if axis.title else ""
        if not title.lower().startswith("layer"):
            continue
        ref = "x" + key[len("xaxis"):]
        values = {v for t in fig.data if getattr(t, "xaxis", "x") in (ref, None) and getattr(t, "x", None) is not None
                  for v in t.x if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not values or any(not float(v).is_integer() for v in values):
            continue
        layers = sorted(int(v) for v in values)
        if len(layers) <= 16:
            axis.update(tickmode="array", tickvals=layers, ticktext=[str(v) for v in layers])
        else:
            axis.update(tickmode="linear", tick0=0, dtick=math.ceil((layers[-1] - layers[0]) / 12), tickformat="d")


def _units(fig: go.Figure) -> None:
    for key in [k for k in fig.layout.to_plotly_json() if k.startswith(("xaxis", "yaxis"))]:
        axis = fig.layout[key]
        text = (axis.title.text or "") if axis.title else ""
        if text in AXIS_UNITS:
            axis.title.text = AXIS_UNITS[text]
        elif "accuracy" in text and "(" not in text:
            axis.title.text = f"{text} (fraction of items)"


def style_figure(fig: go.Figure | dict | str) -> go.Figure:
    """A styled copy of `fig` (a figure, its dict or its JSON): the palimpsest template, role colours, dashes and
    markers, integer layer ticks, axis titles with units. Idempotent."""
    if isinstance(fig, str):
        fig = pio.from_json(fig, skip_invalid=True)
    fig = go.Figure(fig)
    fig.layout.template = pio.templates[TEMPLATE_NAME]
    drawn = [t for t in fig.data if t.type in ("scatter", "bar", "box", "violin")]
    sets = {set_of(t.name) for t in drawn if t.name and not _is_band(t)} - {None}
    roles = {role_of(t.name) or role_of(t.legendgroup) for t in drawn if not _is_band(t)}
    # one model in every trace (e.g. post under several attacks): its colour tells nothing, the palette does
    by_role = len(roles - {None}) > 1 or (len(drawn) == 1 and None not in roles)
    others = iter(PALETTE[2:] + PALETTE[:2] if by_role else PALETTE)
    seen: dict[tuple, int] = {}
    for trace in drawn:
        role = (role_of(trace.name) or role_of(trace.legendgroup)) if by_role else None
        if _per_point_colours(trace) or (role is None and _keep_colour(trace)):
            continue
        if _is_band(trace):
            _style_trace(trace, role, False, GREY)
            continue
        key = (role, set_of(trace.name)) if role else (id(trace),)
        repeat = seen[key] = seen.get(key, -1) + 1
        _style_trace(trace, role, len(sets) > 1, next(others, GREY), repeat)
    _drop_repeated_bands(fig)
    lines = [t for t in fig.data if t.type == "scatter" and not _is_band(t)]
    if len(lines) > 1:
        for rank, trace in enumerate(fig.data):
            trace.legendrank = 100 + rank
        # bands at the back, then the widest line, so coinciding lines all stay visible
        order = sorted(range(len(fig.data)), key=lambda i: (not _is_band(fig.data[i]),
                                                             -(fig.data[i].line.width or 0)
                                                             if fig.data[i].type == "scatter" else 0))
        fig.data = tuple(fig.data[i] for i in order)
    _integer_layer_axes(fig)
    _units(fig)
    return fig


def threshold_line(fig: go.Figure, name: str, value: float) -> None:
    """Draw one of the verdict's thresholds (suppressed_min_residue, deleted_max_residue) at y = `value`, its label
    outside the plot on the right, where no bar or line can hide it (leave about 150 px of right margin)."""
    style = THRESHOLD_STYLE.get(name, {"color": GREY, "dash": "dot"})
    fig.add_hline(value, line_dash=style["dash"], line_color=style["color"], line_width=1.5)
    fig.add_annotation(text=f"{name}<br>= {value:g}", xref="paper", x=1.01, xanchor="left", yref="y", y=value,
                       showarrow=False, align="left", font={"color": style["color"], "size": 10})
