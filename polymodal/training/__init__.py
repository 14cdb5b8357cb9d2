"""polymodal.training"""
