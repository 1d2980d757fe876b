"""ddnn.export"""
