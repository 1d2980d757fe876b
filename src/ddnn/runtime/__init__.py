"""ddnn.runtime"""
