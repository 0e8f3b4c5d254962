from .fconv_translation import FConvTranslationConfig, FConvTranslationTask

__all__ = ["FConvTranslationConfig", "FConvTranslationTask"]
