"""Registration of every nodule's views onto the canonical atlas (``llnm3d register``).

- :mod:`.views`: one ultrasound view onto an atlas cross-section (SimpleITK).
- :mod:`.fusion`: a nodule's two views registered consistently and fused into a 3D patch.
- :mod:`.cohort`: a whole manifest, in parallel, resumable, with a QC table.
"""

from .cohort import Registered, load_patch, load_registered, register
from .fusion import NoduleRegistration, Patch, fuse_views, register_nodule
from .views import RegistrationError, ViewImage, ViewRegistration, atlas_plane, register_view

__all__ = ["NoduleRegistration", "Patch", "Registered", "RegistrationError", "ViewImage",
           "ViewRegistration", "atlas_plane", "fuse_views", "load_patch", "load_registered",
           "register", "register_nodule", "register_view"]
