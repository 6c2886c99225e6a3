"""The certificate authority: root and intermediate keys, CSR checking and
signing, the signing service, and the trust bundle with root rotation.

It knows nothing of pods: whether a caller may have an identity is asked of
an authorizer passed in.
"""
