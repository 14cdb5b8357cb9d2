"""polymodal.compress"""
