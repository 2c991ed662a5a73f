"""d2l's plotting helpers, free of any framework, for the JAX tab.

Same names and signatures as ``d2l.torch``'s: ``use_svg_display``,
``set_figsize``, ``set_axes``, ``plot``, ``show_images`` and the
``ProgressBoard`` that redraws loss and accuracy curves while a model trains.
"""
import collections

import numpy as np
from matplotlib import pyplot as plt
from matplotlib_inline import backend_inline


def to_numpy(x):
    """A NumPy copy of a PyTorch tensor, a JAX array or anything array-like."""
    if hasattr(x, 'detach'):
        x = x.detach().cpu()
    return np.asarray(x)


def use_svg_display():
    """Use the svg format to display a plot in Jupyter."""
    backend_inline.set_matplotlib_formats('svg')


def set_figsize(figsize=(3.5, 2.5)):
    """Set the figure size for matplotlib."""
    use_svg_display()
    plt.rcParams['figure.figsize'] = figsize


def set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend):
    """Set the axes for matplotlib."""
    axes.set_xlabel(xlabel), axes.set_ylabel(ylabel)
    axes.set_xscale(xscale), axes.set_yscale(yscale)
    axes.set_xlim(xlim), axes.set_ylim(ylim)
    if legend:
        axes.legend(legend)
    axes.grid()


def plot(X, Y=None, xlabel=None, ylabel=None, legend=[], xlim=None, ylim=None,
         xscale='linear', yscale='linear', fmts=('-', 'm--', 'g-.', 'r:'),
         figsize=(3.5, 2.5), axes=None):
    """Plot data points: one curve per row of Y (or of X when Y is None)."""
    def has_one_axis(X):
        return (hasattr(X, 'ndim') and X.ndim == 1 or
                isinstance(X, list) and not hasattr(X[0], '__len__'))

    if has_one_axis(X):
        X = [X]
    if Y is None:
        X, Y = [[]] * len(X), X
    elif has_one_axis(Y):
        Y = [Y]
    if len(X) != len(Y):
        X = X * len(Y)
    set_figsize(figsize)
    if axes is None:
        axes = plt.gca()
    axes.cla()
    for x, y, fmt in zip(X, Y, fmts):
        if len(x):
            axes.plot(to_numpy(x), to_numpy(y), fmt)
        else:
            axes.plot(to_numpy(y), fmt)
    set_axes(axes, xlabel, ylabel, xlim, ylim, xscale, yscale, legend)


def show_images(imgs, num_rows, num_cols, titles=None, scale=1.5):
    """Plot a grid of images, with optional titles."""
    figsize = (num_cols * scale, num_rows * scale)
    _, axes = plt.subplots(num_rows, num_cols, figsize=figsize, squeeze=False)
    axes = axes.flatten()
    for i, (ax, img) in enumerate(zip(axes, imgs)):
        # matplotlib's default colour map, as d2l's PyTorch show_images
        ax.imshow(to_numpy(img))
        ax.axes.get_xaxis().set_visible(False)
        ax.axes.get_yaxis().set_visible(False)
        if titles:
            ax.set_title(titles[i])
    return axes


class ProgressBoard:
    """The board that plots data points in animation."""
    def __init__(self, xlabel=None, ylabel=None, xlim=None, ylim=None,
                 xscale='linear', yscale='linear',
                 ls=('-', '--', '-.', ':'), colors=('C0', 'C1', 'C2', 'C3'),
                 fig=None, axes=None, figsize=(3.5, 2.5), display=True):
        self.xlabel, self.ylabel, self.xlim, self.ylim = xlabel, ylabel, xlim, ylim
        self.xscale, self.yscale, self.ls, self.colors = xscale, yscale, ls, colors
        self.fig, self.axes, self.figsize, self.display = fig, axes, figsize, display
        self.raw_points = collections.OrderedDict()
        self.data = collections.OrderedDict()

    def draw(self, x, y, label, every_n=1):
        """Add point (x, y) to the curve ``label``; every ``every_n`` points are
        averaged into one plotted point."""
        points = self.raw_points.setdefault(label, [])
        line = self.data.setdefault(label, [])
        points.append((x, float(y)))
        if len(points) != every_n:
            return
        line.append(tuple(np.mean(points, axis=0)))
        points.clear()
        if not self.display:
            return
        from IPython import display
        use_svg_display()
        if self.fig is None:
            self.fig = plt.figure(figsize=self.figsize)
        axes = self.axes if self.axes else self.fig.gca()
        axes.cla()
        for (name, values), ls, color in zip(self.data.items(), self.ls, self.colors):
            axes.plot([p[0] for p in values], [p[1] for p in values],
                      linestyle=ls, color=color, label=name)
        if self.xlim:
            axes.set_xlim(self.xlim)
        if self.ylim:
            axes.set_ylim(self.ylim)
        axes.set_xlabel(self.xlabel or 'x')
        axes.set_ylabel(self.ylabel)
        axes.set_xscale(self.xscale)
        axes.set_yscale(self.yscale)
        axes.legend()
        display.display(self.fig)
        display.clear_output(wait=True)
