"""polymodal.serve"""
