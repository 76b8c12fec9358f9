"""The run report: DIR/_report/index.html with histograms (SVG drawn by hand) and contact sheets."""
