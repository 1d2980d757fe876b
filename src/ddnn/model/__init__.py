"""ddnn.model"""
