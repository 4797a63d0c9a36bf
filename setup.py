from setuptools import find_packages, setup

setup(
    name='mobileone-mm',
    version='0.1.0',
    description='MobileOne re-parameterizable backbone for OpenMMLab detection and '
    'segmentation',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mobileone_mm', 'mobileone_mm.*']),
    python_requires='>=3.8',
    # torch and mmengine are the only runtime needs of the library; mmdet / mmseg /
    # mmpretrain are used by the configs and tests (installed by tools/install.sh).
    install_requires=['torch', 'mmengine'],
    license='Apache-2.0',
)
