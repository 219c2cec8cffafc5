"""The napari face of napari-mutualseg: panels, layer adapters, menu commands, sample data.

Nothing here computes: it turns layers into the core's inputs (:mod:`.prepare`), runs the
core's engine in a worker (:mod:`.workers`, :mod:`.controller`) and writes its reports back
into layers the plugin owns (:mod:`.layers`). The core never imports this package.
"""
