"""Helpers the dashboard pages share: sidebar, cached queries and error display.

This is a package, not a page: Streamlit lists only the `.py` files directly inside
`pages/`.
"""
