"""Cell segmentation from boxes by two networks that teach each other.

The Python API lives in the modules (importing the package itself loads nothing heavy):

- ``io.read_image``, ``io.read_box_table``: an image file and its boxes (a napari Shapes CSV,
  a ``y0,x0,y1,x1`` table or scikit-image's regionprops table, a Fiji ROI set or QuPath
  GeoJSON); ``images.AxisImage.from_file`` reads an image with its axes, channel names and
  pixel size.
- ``supervision.make_supervision``: boxes (``y0, x0, y1, x1`` rows, napari rectangles, a
  DataFrame or ``regionprops_table`` of them) -> the ellipse labels the networks start from.
- ``training.MutualTrainer`` with ``config.TrainConfig``: trains the pair, one report per round.
- ``models.ModelPair``: the trained pair; ``save``, ``load``, ``segment`` (cells) and
  ``predict`` (cells, where the two networks disagree, the cells to check first).
- ``supervision.corrected_cells``, ``supervision.supervision_from_masks``: a corrected
  segmentation back into training.
- ``ome.labels_zarr``: OME-Zarr labels that ``segment`` writes block by block (``out=``);
  ``linking.link_labels``: labels segmented plane by plane linked through z or time.
- ``batch.BatchRun``: folders of images, here or on a dask cluster.
- ``measure.measure_cells``, ``export``: cell tables, Fiji ROI sets, QuPath GeoJSON.
- ``metrics.evaluate``: scores against ground truth; ``sample.load_sample``: the bundled image.

The ``napari-mutualseg`` command (:mod:`napari_mutualseg.cli`) and the napari plugin use them.
"""

__version__ = "0.1.0"
